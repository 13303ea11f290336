"""One rank of the FSDP2 runs of tests/test_fsdp2.py, and the model, data and loop its unsharded
reference shares.

`worker` is started twice by `torch.multiprocessing.spawn` (gloo, CPU): it shards a small float64
model with `fully_shard` (each block, then the root), trains it watched with every probe, and
writes `rank-N.json` beside the run: the collectives the Inspector's own code issued (by step), the
calls it made that would gather a whole parameter (`DTensor.full_tensor`/`redistribute`), the
gradients probe's per-rank state size, and the warnings it logged. Sizes are uneven on purpose:
`fc1` (49 rows) splits 25/24 and the head (1 row) leaves rank 1 an empty shard.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

IN, HID, OUT = 8, 16, 1
BLOCKS = 2
ROWS_PER_RANK = 4
STEPS = 6
GRAD_EVERY = 2  # gradient statistics sampled on steps 0, 2, 4; the other steps record the norms only
WEIGHT_EVERY = 2
CLIP = 4.0  # between the smallest and the largest pre-clip norm of the 6 steps: some clipped, some not
LR = 0.02


PASS_THROUGH = "inspector.watchdog.collective_patch"
"""The watchdog's wrappers of the `torch.distributed` collectives: they record a call (FSDP2's, the
loop's) and pass it on, issuing none of their own."""


class Block(nn.Module):
    """Pre-norm residual MLP block."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(HID)
        self.fc1 = nn.Linear(HID, 3 * HID + 1)
        self.fc2 = nn.Linear(3 * HID + 1, HID)

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        return x_BD + self.fc2(torch.tanh(self.fc1(self.norm(x_BD))))


class Net(nn.Module):
    """Input projection, `BLOCKS` blocks, one-output head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(IN, HID)
        self.blocks = nn.ModuleList(Block() for _ in range(BLOCKS))
        self.head = nn.Linear(HID, OUT)

    def forward(self, x_BI: torch.Tensor) -> torch.Tensor:
        h_BD = self.inp(x_BI)
        for block in self.blocks:
            h_BD = block(h_BD)
        return self.head(h_BD)


def build_model() -> Net:
    """The same float64 initial weights in every process."""
    torch.manual_seed(0)
    return Net().double()


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW, so the update is not a multiple of the gradient."""
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)


def global_batch(step: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch of `step`: rank r trains on rows [r * ROWS_PER_RANK, (r + 1) * ROWS_PER_RANK)."""
    gen = torch.Generator().manual_seed(1000 + step)
    x_BI = torch.randn(world * ROWS_PER_RANK, IN, generator=gen, dtype=torch.float64)
    y_BO = torch.randn(world * ROWS_PER_RANK, OUT, generator=gen, dtype=torch.float64)
    return x_BI, y_BO


def _nothing() -> None:
    pass


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x_BI: torch.Tensor, y_BO: torch.Tensor,
               after_backward: Callable[[], None] = _nothing, after_clip: Callable[[], None] = _nothing) -> None:
    """Mean-squared-error step with gradient clipping; the callbacks let the reference look at the
    gradients before and after clipping."""
    loss = nn.functional.mse_loss(model(x_BI), y_BO)
    loss.backward()
    after_backward()
    nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    after_clip()
    opt.step()
    opt.zero_grad()


class _Census:
    """Counts what the Inspector's own code (frames under inspector/ or plugins/) asks of torch.distributed."""

    def __init__(self) -> None:
        self.step = -1
        self.collectives: list[tuple[int, str, str]] = []
        self.gathers: list[str] = []

    @staticmethod
    def caller() -> str | None:
        """The Inspector modules on the stack, innermost first ("a < b"), or None for a call of
        the training loop's or of torch's own (FSDP2's reduce-scatter, the loop's clipping)."""
        frame = sys._getframe(2)
        chain: list[str] = []
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if (module.startswith(("inspector.", "inspector_plugins.")) and module not in chain
                    and module != PASS_THROUGH):
                chain.append(module)
            frame = frame.f_back
        return " < ".join(chain) or None

    def wrap_collective(self, owner: Any, name: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return

        def counted(*args: Any, **kwargs: Any) -> Any:
            who = self.caller()
            if who is not None:
                self.collectives.append((self.step, who, name))
            return original(*args, **kwargs)

        setattr(owner, name, counted)

    def wrap_gather(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            who = self.caller()
            if who is not None:
                self.gathers.append(f"{who}: DTensor.{name}")
            return original(*args, **kwargs)

        setattr(owner, name, counted)


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def worker(rank: int, world: int, run: str, rendezvous: str, probes: Any) -> None:
    """One FSDP2 rank: shard, watch with `probes`, train `STEPS` steps, write rank-N.json."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    import inspector
    from inspector.probes.registry import install_plugin_probes

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=rendezvous)
    census = _Census()
    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_single", "all_gather_object",
                 "reduce_scatter_tensor", "broadcast", "reduce", "gather", "all_to_all_single", "barrier"):
        census.wrap_collective(dist, name)
    census.wrap_gather(DTensor, "full_tensor")
    census.wrap_gather(DTensor, "redistribute")
    warned = _Warnings()
    logging.getLogger("inspector").addHandler(warned)
    try:
        install_plugin_probes()
        from inspector_plugins.weight_norm.probe import WeightNormProbe

        WeightNormProbe.period = WEIGHT_EVERY
        model = build_model()
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        opt = make_optimizer(model)
        w = inspector.watch(model, run, optimizer=opt, probes=probes, every={"gradients": GRAD_EVERY})
        for step in range(STEPS):
            census.step = step
            x_BI, y_BO = global_batch(step, world)
            rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
            train_step(model, opt, x_BI[rows], y_BO[rows])
        census.step = STEPS
        grads_probe = w.probes.get("gradients")
        welford = [m for m in getattr(getattr(grads_probe, "_welford", None), "mean", []) if m is not None]
        with torch.no_grad():
            local_numel = sum(p.to_local().numel() for p in model.parameters())
        attached = sorted(w.probes)
        w.close()
        census.step = STEPS + 1
        dist.barrier()
        info = {"collectives": census.collectives, "gathers": census.gathers, "warnings": warned.lines,
                "probes": attached, "not_applicable": w.not_applicable,
                "welford_numel": sum(m.numel() for m in welford), "local_numel": local_numel,
                "full_numel": sum(p.numel() for p in model.parameters())}
        Path(run).parent.joinpath(f"rank-{rank}.json").write_text(json.dumps(info))
    finally:
        logging.getLogger("inspector").removeHandler(warned)
        dist.destroy_process_group()
