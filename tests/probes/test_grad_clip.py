"""The global gradient norm is the one backward produced, before the training loop clips it.

Oracles: the value `torch.nn.utils.clip_grad_norm_` returned (the engine trainer's `grad_norm`
metric, and the tests' own loops), and the clip arithmetic redone in numpy.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import inspector
from inspector.demo import RecordingCallback

CLIP = 1.6  # the debug model's first steps have norms 1.3-2.1: some steps are clipped, some not


def _scalars(run: Path, rank: int = 0) -> dict[str, np.ndarray]:
    df = inspector.open_run(run).to_pandas("scalar")
    df = df[df["rank"] == rank]
    return {name: g.sort_values("step")["value"].to_numpy(np.float64) for name, g in df.groupby("name")}


def _train_engine(run: Path, steps: int, grad_accum: int) -> list[dict[str, float]]:
    from inspector_engine.config import get_config
    from inspector_engine.training import TrainConfig, Trainer

    cfg = TrainConfig(steps=steps, batch_size=2, seq_len=32, grad_accum=grad_accum, grad_clip=CLIP,
                      progress=False, eval_every=10_000, num_threads=1)
    trainer = Trainer(get_config("debug"), cfg)
    with inspector.watch(trainer.model, run, optimizer=trainer.optimizer, probes=["gradients"]) as w:
        trainer.callbacks.append(RecordingCallback(w))
        for _ in range(steps):
            trainer.train_step()
    return trainer.history


def _check_clip_scalars(s: dict[str, np.ndarray]) -> None:
    pre = s["grad_norm"]  # what clip_grad_norm_ returned, recorded by the loop
    np.testing.assert_allclose(s["grad_norm/global"], pre, rtol=1e-5)
    coef = np.minimum(1.0, CLIP / (pre + 1e-6))  # torch's clip_grad_norm_ arithmetic
    np.testing.assert_allclose(s["grad_norm/clip_coef"], coef, rtol=1e-5)
    np.testing.assert_allclose(s["grad_norm/applied"], pre * coef, rtol=1e-5)


def test_engine_trainer_pre_clip_norm_is_what_clip_grad_norm_returned(tmp_path: Path) -> None:
    history = _train_engine(tmp_path / "run", steps=6, grad_accum=2)
    s = _scalars(tmp_path / "run")
    assert len(s["grad_norm/global"]) == 6
    pre = np.array([h["grad_norm"] for h in history])
    assert (pre > CLIP).any() and (pre < CLIP).any()  # both cases are exercised
    _check_clip_scalars(s)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def test_sustained_explosion_is_judged_before_clipping_and_stays_flagged(tmp_path: Path) -> None:
    """A loop that clips to 1 before `Watch.step()` (no optimizer handed to the watch): from step 30
    on the loss is 1000x; every exploded step is flagged, its pre-clip norm recorded."""
    model = _mlp()
    gen = torch.Generator().manual_seed(3)
    returned: list[float] = []
    w = inspector.watch(model, tmp_path / "run", probes=["gradients"], every={"gradients": 1000})
    for s in range(70):
        model.zero_grad()
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
        loss = nn.functional.mse_loss(model(x), y) * (1000.0 if s >= 30 else 1.0)
        loss.backward()
        returned.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        w.step()
    w.close()
    r = inspector.open_run(tmp_path / "run")
    norms = r.to_pandas("scalar", names=["grad_norm/global"]).sort_values("step")["value"].to_numpy()
    np.testing.assert_allclose(norms, returned, rtol=1e-5)
    a = r.to_pandas("anomaly")
    assert a[a["kind"] == "exploding_grad"]["step"].tolist() == list(range(30, 70))


def test_gradients_set_by_hand_fall_back_to_the_norm_at_the_step(tmp_path: Path) -> None:
    model = _mlp()
    w = inspector.watch(model, tmp_path / "run", probes=["gradients"])
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    w.step()
    w.close()
    s = _scalars(tmp_path / "run")
    n = sum(p.numel() for p in model.parameters())
    np.testing.assert_allclose(s["grad_norm/global"], [0.5 * np.sqrt(n)], rtol=1e-6)
    assert "grad_norm/applied" not in s and "grad_norm/clip_coef" not in s  # nothing measured before clipping


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, run: str, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch.distributed as dist

    try:
        _train_engine(Path(run), steps=4, grad_accum=2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.multiproc
def test_ddp_pre_clip_norm_is_the_all_reduced_one_on_every_rank(tmp_path: Path) -> None:
    """Under DDP (gloo, 2 ranks, gradient accumulation with `no_sync`) the norm is measured after
    DDP's all-reduce: each rank's equals what its `clip_grad_norm_` returned on the reduced
    gradients (a norm of the local, un-reduced gradients would differ: the ranks see different data)."""
    import torch.multiprocessing as mp

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)
    run = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, str(run), _free_port()), nprocs=2, join=True)
    for rank in (0, 1):
        _check_clip_scalars(_scalars(run, rank))
    both = [_scalars(run, rank)["grad_norm/global"] for rank in (0, 1)]
    np.testing.assert_allclose(both[0], both[1], rtol=1e-6)  # reduced gradients are the same everywhere
