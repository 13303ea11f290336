"""Stage 5, FSDP2 + torch.compile with the default probes, one rank (NCCL on the GPU, gloo in a dry run).

A small attention + MLP model is sharded with `fully_shard` (each block, then the root), compiled
with `torch.compile` (inductor; `aot_eager` in a dry run, which traces the same graphs without a
C++ compiler) and trained a few steps twice from the same seed and batches: unwatched, then with
`inspector.watch(probes="default", every=1)` attached before compiling. Reported: dynamo's graphs,
graph breaks, recompiles and frames compiled of each run and the difference (budget: 0 breaks and
0 recompiles added; added graphs and frames are reported, not judged: under FSDP2 the root's
frame is skipped by dynamo (FSDP2's hooks call `torch._dynamo.disable` in the blocks' loop) and a
hooked submodule or hook then compiles as a frame of its own); the gradient norm the
loop's own `clip_grad_norm_` returns, watched vs unwatched (the probes change nothing: rtol 1e-4,
atomics in CUDA backward kernels are not bitwise reproducible); the recorded `grad_norm/global`
vs the watched run's own `clip_grad_norm_` (rtol 1e-5); the Inspector's warnings.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu_check.common import Result, cuda_ready, dry_run, judge, no_cuda, quick, run_stage

CLIP = 1.0
VOCAB = 64


def build_model(dim: int) -> Any:
    """Embedding, two pre-norm blocks (causal multi-head attention, GELU MLP), head."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
            self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

        def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
            h_BTD = self.norm1(x_BTD)
            T = x_BTD.shape[1]
            causal_TT = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x_BTD.device), 1)
            x_BTD = x_BTD + self.attn(h_BTD, h_BTD, h_BTD, attn_mask=causal_TT, need_weights=False)[0]
            return x_BTD + self.down(nn.functional.gelu(self.up(self.norm2(x_BTD))))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, dim)
            self.layers = nn.ModuleList([Block(), Block()])
            self.head = nn.Linear(dim, VOCAB)

        def forward(self, x_BT: torch.Tensor) -> torch.Tensor:
            h_BTD = self.emb(x_BT)
            for layer in self.layers:
                h_BTD = layer(h_BTD)
            return self.head(h_BTD)

    torch.manual_seed(0)
    return Net()


def dynamo_counts() -> dict[str, int]:
    """Dynamo's graphs, graph breaks and recompiles so far."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]), "breaks": int(sum(counters["graph_break"].values())),
            "recompiles": int(sum(counters["recompiles"].values())), "frames": int(counters["frames"]["total"])}


def train(device: Any, run_dir: Path | None, steps: int, dim: int, backend: str) -> tuple[dict[str, int], list[float]]:
    """Shard, (watch,) compile and train; dynamo's counts and the loop's gradient norm per step."""
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters
    from torch.distributed.fsdp import fully_shard

    import inspector

    torch._dynamo.reset()
    counters.clear()
    model = build_model(dim).to(device)
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    w = inspector.watch(model, run_dir, optimizer=opt, probes="default", every=1) if run_dir else None
    run = torch.compile(model, backend=backend)
    gen = torch.Generator().manual_seed(1)
    norms = []
    try:
        for _ in range(steps):
            x_BT = torch.randint(0, VOCAB, (4, 32), generator=gen).to(device)
            y_BT = torch.randint(0, VOCAB, (4, 32), generator=gen).to(device)
            loss = torch.nn.functional.cross_entropy(run(x_BT).flatten(0, 1), y_BT.flatten())
            loss.backward()
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            norms.append(total.full_tensor() if hasattr(total, "full_tensor") else total)
            opt.step()
            if w is not None:
                w.step(loss=loss.detach())
            opt.zero_grad(set_to_none=True)
    finally:
        if w is not None:
            w.close()
    return dynamo_counts(), [float(n) for n in norms]


def max_rel(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> float:
    """Largest relative difference of two equal-length series (inf when the lengths differ)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or not len(a):
        return float("inf")
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage()[:200])


def body(out: Path, res: Result) -> None:
    """Both runs, the comparisons, the verdict."""
    import torch
    import torch.distributed as dist

    import inspector

    on_gpu = cuda_ready()
    if not on_gpu and not dry_run():
        no_cuda(res, "torch sees no CUDA device")
        return
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    backend = os.environ.get("GPU_CHECK_COMPILE_BACKEND", "inductor" if on_gpu else "aot_eager")
    steps, dim = (3, 32) if quick() or dry_run() else (6, 128)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if on_gpu else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    lines = _Lines()
    logging.getLogger("inspector").addHandler(lines)
    fig = res.figures
    fig["stack"] = f"FSDP2 fully_shard x1 rank ({dist.get_backend()}), torch.compile backend {backend}, {device}"
    try:
        plain, plain_norms = train(device, None, steps, dim, backend)
        run_dir = out / "work" / "fsdp-compile-run"
        watched, watched_norms = train(device, run_dir, steps, dim, backend)
    finally:
        logging.getLogger("inspector").removeHandler(lines)
        dist.destroy_process_group()
    df = inspector.open_run(run_dir).to_pandas("scalar")
    recorded = df[df["name"] == "grad_norm/global"].sort_values("step")["value"].to_numpy(np.float64)
    added = {k: watched[k] - plain[k] for k in plain}
    keys = ("graphs", "breaks", "recompiles", "frames")
    fig["unwatched graphs/breaks/recompiles/frames"] = "/".join(str(plain[k]) for k in keys)
    fig["watched graphs/breaks/recompiles/frames"] = "/".join(str(watched[k]) for k in keys)
    fig["graph breaks added"] = added["breaks"]
    fig["recompiles added"] = added["recompiles"]
    fig["graphs added"] = added["graphs"]
    fig["frames compiled added"] = added["frames"]
    fig["grad norm watched vs unwatched, max rel diff"] = f"{max_rel(watched_norms, plain_norms):.2e}"
    fig["recorded grad_norm/global vs loop's, max rel diff"] = f"{max_rel(recorded, watched_norms):.2e}"
    fig["recorded grad norms"] = len(recorded)
    fig["inspector warnings"] = lines.lines
    res.budget = "0 breaks, 0 recompiles added; norms equal"
    if added["graphs"] or added["frames"]:
        res.notes.append(f"watch added {added['graphs']} graph(s) and {added['frames']} compiled frame(s) (not breaks:"
                         " under FSDP2 dynamo compiles hooked modules and Probe.guard wrappers as frames of their own)")
    judge(res, added["breaks"] == 0 and added["recompiles"] == 0 and len(recorded) == steps
          and max_rel(watched_norms, plain_norms) <= 1e-4 and max_rel(recorded, watched_norms) <= 1e-5)


if __name__ == "__main__":
    sys.exit(run_stage("fsdp_compile", body))
