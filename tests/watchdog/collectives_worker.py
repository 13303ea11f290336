"""One rank of the collective tracker's 2-rank gloo tests (started by `test_collectives.py` through
`python -m tests.watchdog.collectives_worker RANK OUT PORT`): runs every scenario in turn and pickles what it saw to `out/rank-N.pkl`."""
from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from inspector.watchdog import collective_patch
from inspector.watchdog.collectives import CollectiveTracker
from inspector.watchdog.progress import Progress

SLEEP_S = 0.4
DDP_STEPS = 6


class Spy:
    """A listener of the wrapped collectives called after the tracker: the phase and collective the
    tracker's Progress shows while a call runs."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.seen: list[tuple[str, str, int | None]] = []

    def begin(self, op: str, group: Any, sent: Any, is_async: bool) -> None:
        c = self.progress.collective
        self.seen.append((op, self.progress.phase, None if c is None else c.seq))

    def end(self, token: Any, result: Any, raised: bool) -> None:
        pass


def _basic(tracker: CollectiveTracker, rank: int) -> dict[str, Any]:
    """Blocking and async collectives on the world and a subgroup; what the tracker and Progress saw."""
    spy = Spy(tracker.progress)
    collective_patch.add_listener(spy)
    sub = dist.new_group([0, 1])
    x_4 = torch.full((4,), float(rank + 1))
    dist.all_reduce(x_4)
    outs = [torch.zeros(2, 3, dtype=torch.float64) for _ in range(2)]
    dist.all_gather(outs, torch.full((2, 3), float(rank), dtype=torch.float64))
    gathered_6 = torch.zeros(6, dtype=torch.int64)
    dist.all_gather_into_tensor(gathered_6, torch.arange(3, dtype=torch.int64) + rank, group=sub)
    b_5 = torch.zeros(5, dtype=torch.bfloat16)
    dist.broadcast(b_5, src=0)
    dist.barrier()
    work = dist.all_reduce(torch.ones(7, 2), async_op=True)
    work.wait()
    deadline = time.time() + 30
    while tracker.recent[-1].completed is None and time.time() < deadline:   # the future's callback runs on gloo's thread
        time.sleep(0.01)
    collective_patch.remove_listener(spy)
    groups, recent, current = tracker.snapshot()
    return {"spy": spy.seen, "groups": groups, "recent": recent, "current": current, "phase_after": tracker.progress.phase,
            "sub_name": dist.distributed_c10d._get_process_group_name(sub),
            "results": (x_4.tolist(), [o.tolist() for o in outs], gathered_6.tolist())}


def _blocking_wait(tracker: CollectiveTracker, rank: int) -> dict[str, float]:
    """Rank 1 enters an all_reduce SLEEP_S late: rank 0's comm_wait of that step holds the wait."""
    tracker.step_times(0)
    dist.barrier()
    tracker.step_times(0)
    tracker.progress.set_phase("forward")
    if rank == 1:
        time.sleep(SLEEP_S)
    dist.all_reduce(torch.ones(3))
    return tracker.step_times(1)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))


def _ddp_train(rank: int, tracker: CollectiveTracker | None, *, slow: bool = False) -> tuple[list[torch.Tensor], list[dict[str, float]], str | None]:
    """DDP_STEPS SGD steps of `_model` (small buckets: several per step); rank 1 sleeps inside backward
    when `slow`. Returns the parameters, the tracker's step times, attach_ddp's answer."""
    model = nn.parallel.DistributedDataParallel(_model(), bucket_cap_mb=0.01)
    why = tracker.attach_ddp(model) if tracker is not None else None
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(100 + rank)
    times = []
    for step in range(DDP_STEPS):
        x_B16 = torch.randn(8, 16, generator=gen)
        out_B1 = model(x_B16)
        if slow and rank == 1:
            out_B1.register_hook(lambda g: time.sleep(SLEEP_S / 2) or g)
        out_B1.square().mean().backward()
        opt.step()
        opt.zero_grad()
        if tracker is not None:
            times.append(tracker.step_times(step))
    return [p.detach().clone() for p in model.parameters()], times, why


def _fsdp(tracker: CollectiveTracker) -> list[tuple[Any, ...]]:
    """Two steps of an FSDP2 model: the ops the tracker recorded."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2,))
    model = _model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model(torch.randn(4, 16)).sum().backward()
    _, recent, _ = tracker.snapshot()
    return [(r.group, r.op, r.seq, r.shapes, r.dtype, r.completed is not None) for r in recent]


def run(rank: int, out: str, port: int) -> None:
    """Entry point of one rank (torch.multiprocessing passes `rank`)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    result: dict[str, Any] = {}
    originals = {name: getattr(dist, name) for name in ("all_reduce", "all_gather_into_tensor", "barrier")}
    tracker = CollectiveTracker(Progress())
    tracker.install()
    tracker.install()                       # idempotent per tracker
    second = CollectiveTracker(Progress())  # a second Watch in the same process
    second.install()
    result["wrapped"] = all(getattr(dist, n) is not f for n, f in originals.items())
    result["basic"] = _basic(tracker, rank)
    result["second_seqs"] = [r.seq for r in second.recent]
    second.uninstall()
    result["wrapped_after_second"] = all(getattr(dist, n) is not f for n, f in originals.items())
    result["wait"] = _blocking_wait(tracker, rank)
    plain, _, _ = _ddp_train(rank, None)
    hooked, hooked_times, why = _ddp_train(rank, tracker)
    result["ddp"] = {"bit_identical": all(torch.equal(a, b) for a, b in zip(plain, hooked)), "why": why,
                     "n_params": len(plain), "times": hooked_times,
                     "ddp_refs": [(r.op, r.seq, r.shapes, r.dtype, r.completed is not None) for r in tracker.recent
                                  if r.op == "ddp_allreduce"]}
    _, slow_times, _ = _ddp_train(rank, tracker, slow=True)
    result["ddp_slow"] = slow_times
    try:
        result["fsdp"] = _fsdp(tracker)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        result["fsdp"] = f"{type(exc).__name__}: {exc}"
    tracker.uninstall()
    tracker.uninstall()
    result["restored"] = all(getattr(dist, n) is f for n, f in originals.items())
    result["failed"] = tracker.failed
    Path(out, f"rank-{rank}.pkl").write_bytes(pickle.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    import sys

    run(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
