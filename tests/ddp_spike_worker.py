"""A 2-rank DDP run (gloo, CPU), watched with the default probes, in which rank `BAD` trains on a
corrupted batch (inputs x`BLOW_UP`) at step `SPIKE`: the worker of tests/explain/test_explain_ranks.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STEPS, SPIKE, BAD, BLOW_UP = 60, 45, 1, 200.0


def build_model() -> nn.Module:
    """The same small MLP on every rank."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s batch of `step` (its own data, as under data parallelism); corrupted on `BAD` at `SPIKE`."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    x_BI = torch.randn(32, 16, generator=g)
    y_B1 = x_BI[:, :1] * 0.5 + 0.1 * torch.randn(32, 1, generator=g)
    if step == SPIKE and rank == BAD:
        x_BI = x_BI * BLOW_UP
    return x_BI, y_B1


def worker(rank: int, world: int, run: str, rendezvous: str) -> None:
    """One rank: DDP, watched, `STEPS` steps, its own loss recorded each step."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import inspector

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=rendezvous)
    try:
        model = DDP(build_model())
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        w = inspector.watch(model, run, optimizer=opt, hang_after_s=None)
        for step in range(STEPS):
            x_BI, y_B1 = batch(step, rank)
            loss = F.mse_loss(model(x_BI), y_B1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            w.step(loss=loss)
        w.close()
    finally:
        dist.destroy_process_group()
