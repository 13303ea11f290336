"""One rank of a seeded-fault job: `python -m torch.distributed.run --nproc_per_node N -m tests.hangs.worker ...`.

A small residual MLP (defined here, so the test depends on no engine) wrapped in DDP (gloo, CPU),
trained on a map-style dataset through a DataLoader (num_workers=0) and watched with
`hang_after_s`/`heartbeat_s` from the command line. Every step: next batch, forward, loss, an
explicit `dist.all_reduce` of the loss as a metric, backward (DDP all-reduces the gradients),
optimizer step, `watch.step`. `--fault` seeds one fault on rank `--rank` at step `--step`:

- `skip_allreduce`: that rank skips the metric all-reduce the others enter;
- `loader_sleep`: its Dataset `__getitem__` sleeps forever;
- `forward_loop`: its model's forward calls a Python function that loops forever;
- `sigkill`: it SIGKILLs itself in the middle of backward (a gradient hook on the first block's output);
- `mismatch`: it broadcasts the metric where the others all-reduce it (same group, same sequence number);
- `slow_backward`: from that step on, its backward takes ~1.3x its time (a gradient hook burns, in
  CPU time, 0.3x the median backward wall time measured on the steps before; a straggler, not a
  hang). Burnt in CPU time, not wall time: a wall-clock spin shrinks to less work when other
  processes take the core (beside 3 busy loops on 2 cores it measured 1.14x with CPU waits taken
  out), and the detector rightly takes waits out. Calibrated on wall time: calibrated on the
  backward's own CPU time it planted 1.19-1.43x of the backward the detector measures (DDP's
  threads and waits are in that section, not in the main thread's CPU time), and a planted 1.19x
  sits under the detector's 1.2x bar (a CI miss); calibrated on wall time it measures 1.42-1.47x;
- `healthy`: nothing.

Lines where a rank ends up stuck carry a `# fault: <name>` (or `# collective: metric`, `# stuck: backward`) comment; tests
find their numbers with `fault_line` instead of hard-coding them.
"""
from __future__ import annotations

import argparse
import inspect
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

FAULTS = ("skip_allreduce", "loader_sleep", "forward_loop", "sigkill", "mismatch", "slow_backward", "healthy")
IN, HID, BATCH = 32, 128, 16


class Fault:
    """The seeded fault: `active(name)` is true on the faulty rank at the faulty step (from it, for a
    lasting fault) when `name` is the fault chosen."""

    def __init__(self, name: str = "healthy", rank: int = 1, step: int = 5) -> None:
        self.name, self.rank, self.step = name, rank, step
        self.my_rank = 0
        self.current = 0          # the step being executed
        self.busy_s = 0.0         # slow_backward: CPU seconds to burn per backward

    def active(self, name: str, lasting: bool = False) -> bool:
        """This rank, this step (or later when `lasting`), this fault."""
        at = self.current >= self.step if lasting else self.current == self.step
        return self.name == name and self.my_rank == self.rank and at


FAULT = Fault()


def spin_forever(x_BD: torch.Tensor) -> torch.Tensor:
    """A Python loop that never ends (forward_loop)."""
    n = 0
    while True: n += 1  # noqa: E701 - one line, so every sample of the loop is on the marked line  # fault: forward_loop
    return x_BD


def kill_self(grad: torch.Tensor) -> None:
    """SIGKILL this process (sigkill, from a gradient hook inside backward)."""
    os.kill(os.getpid(), signal.SIGKILL)  # fault: sigkill


def busy_wait(grad: torch.Tensor) -> None:
    """Burn `FAULT.busy_s` seconds of this thread's CPU time inside backward (slow_backward)."""
    end = time.thread_time() + FAULT.busy_s
    while time.thread_time() < end:  # fault: slow_backward
        pass


class Block(nn.Module):
    """Pre-norm residual MLP block."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(HID)
        self.fc1 = nn.Linear(HID, 2 * HID)
        self.fc2 = nn.Linear(2 * HID, HID)

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        return x_BD + self.fc2(F.gelu(self.fc1(self.norm(x_BD))))


class Net(nn.Module):
    """Input projection, two blocks, head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(IN, HID)
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(HID, 1)

    def forward(self, x_BI: torch.Tensor) -> torch.Tensor:
        h_BD = self.inp(x_BI)
        for i, layer in enumerate(self.layers):
            h_BD = layer(h_BD)
            if i == 0 and h_BD.requires_grad:
                if FAULT.active("sigkill"):
                    h_BD.register_hook(kill_self)
                if FAULT.active("slow_backward", lasting=True) and FAULT.busy_s > 0:
                    h_BD.register_hook(busy_wait)
            if i == 1 and FAULT.active("forward_loop"):
                h_BD = spin_forever(h_BD)
        return self.head(h_BD)


class Points(Dataset):
    """Random regression data, deterministic per index."""

    def __init__(self, n: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x_NI = torch.randn(n, IN, generator=gen)
        self.y_N1 = self.x_NI[:, :1].sin()

    def __len__(self) -> int:
        return len(self.x_NI)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if FAULT.active("loader_sleep"):
            while True:
                time.sleep(0.5)  # fault: loader_sleep
        return self.x_NI[i], self.y_N1[i]


def metric_all_reduce(loss: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """The explicit collective of every step: the loss averaged over ranks on the "metrics" group
    (skipped, or replaced by a broadcast, by the faults)."""
    metric = loss.detach().clone().reshape(1)
    if FAULT.active("skip_allreduce"):
        return metric  # fault: skip_allreduce
    if FAULT.active("mismatch"):
        dist.broadcast(metric, src=0, group=group)  # fault: mismatch
        return metric
    dist.all_reduce(metric, group=group)  # collective: metric
    return metric / dist.get_world_size()


def fault_line(marker: str) -> int:
    """The line number in this file of the line ending with `# <marker>` (e.g. "fault: loader_sleep")."""
    lines, _ = inspect.findsource(sys.modules[__name__])
    hits = [i + 1 for i, line in enumerate(lines) if line.rstrip().endswith(f"# {marker}")]
    if len(hits) != 1:
        raise LookupError(f"{marker!r} marks {len(hits)} lines of {__file__}")
    return hits[0]


def train(args: argparse.Namespace) -> None:
    """The training loop (see the module docstring)."""
    import inspector
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    FAULT.my_rank = dist.get_rank()
    # Metrics on a group of their own, as many trainers do: on gloo a collective skipped on the
    # gradients' group makes the next ones mismatch in size, which gloo aborts on instead of hanging.
    metrics = dist.new_group(group_desc="metrics")
    torch.manual_seed(0)
    model = DistributedDataParallel(Net())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = Points(BATCH * max(args.steps, 8))
    loader = DataLoader(data, batch_size=BATCH, shuffle=False, num_workers=0)
    watch = inspector.watch(model, args.run_dir, optimizer=opt, probes=args.probes,
                            hang_after_s=args.hang_after_s, heartbeat_s=args.heartbeat_s)
    backward_s: list[float] = []
    batches = iter(loader)
    try:
        for step in range(args.steps):
            FAULT.current = step
            if FAULT.name == "slow_backward" and step == FAULT.step and backward_s:
                FAULT.busy_s = args.slow * statistics.median(backward_s[1:] or backward_s)
            try:
                x_BI, y_B1 = next(batches)
            except StopIteration:
                batches = iter(loader)
                x_BI, y_B1 = next(batches)
            loss = F.mse_loss(model(x_BI), y_B1)
            metric = metric_all_reduce(loss, metrics)
            t0 = time.perf_counter()
            loss.backward()  # stuck: backward
            if step < FAULT.step:
                backward_s.append(time.perf_counter() - t0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            watch.step(loss=loss.detach(), metric=metric.sum())
            if args.step_sleep:
                time.sleep(args.step_sleep)
    finally:
        watch.close()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and train."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--fault", choices=FAULTS, default="healthy")
    ap.add_argument("--rank", type=int, default=1, help="the faulty rank")
    ap.add_argument("--step", type=int, default=5, help="the step the fault starts at")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--probes", default="default")
    ap.add_argument("--hang-after-s", type=float, default=5.0)
    ap.add_argument("--heartbeat-s", type=float, default=1.0)
    ap.add_argument("--slow", type=float, default=0.3, help="slow_backward: extra backward time, as a fraction")
    ap.add_argument("--step-sleep", type=float, default=0.0, help="seconds of sleep after each step")
    args = ap.parse_args(argv)
    FAULT.name, FAULT.rank, FAULT.step = args.fault, args.rank, args.step
    train(args)


if __name__ == "__main__":
    main()
