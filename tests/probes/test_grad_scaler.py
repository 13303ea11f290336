"""fp16 loss scaling: the gradient norms the probe records are those of the true gradients.

The reference is the test's own: after `scaler.unscale_(opt)` (the documented place to clip), the
2-norm of every gradient, computed with numpy in float64, before `clip_grad_norm_` changes them.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

import inspector
from inspector.store.reader import RunReader

STEPS = 6


def _train(run: Path, *, clip: float) -> tuple[list[float], list[float]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    w = inspector.watch(model, run, probes=["gradients"], optimizer=opt)
    pre, applied = [], []
    gen = torch.Generator().manual_seed(1)
    try:
        for _ in range(STEPS):
            x_BD = torch.randn(16, 8, generator=gen)
            loss = model(x_BD).pow(2).mean()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            pre.append(math.sqrt(sum(float(np.square(p.grad.double().numpy()).sum()) for p in model.parameters())))
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            applied.append(math.sqrt(sum(float(np.square(p.grad.double().numpy()).sum()) for p in model.parameters())))
            scaler.step(opt)
            scaler.update()
            w.step(loss=loss.detach())
            opt.zero_grad(set_to_none=True)
    finally:
        w.close()
    return pre, applied


def _scalar(run: Path, name: str) -> np.ndarray:
    df = RunReader(run).to_pandas("scalar")
    return df[df["name"] == name].sort_values("step")["value"].to_numpy()


def test_pre_clip_norm_is_unscaled(tmp_path: Path) -> None:
    pre, applied = _train(tmp_path / "run", clip=0.05)
    assert min(p / a for p, a in zip(pre, applied)) > 1.5  # clipping did something: the two norms differ
    np.testing.assert_allclose(_scalar(tmp_path / "run", "grad_norm/global"), pre, rtol=1e-4)
    np.testing.assert_allclose(_scalar(tmp_path / "run", "grad_norm/applied"), applied, rtol=1e-4)
    np.testing.assert_allclose(_scalar(tmp_path / "run", "grad_norm/clip_coef"),
                               np.array(applied) / np.array(pre), rtol=1e-4)


def test_scaler_unwrapped_after_close(tmp_path: Path) -> None:
    original = torch.amp.GradScaler.scale
    _train(tmp_path / "run", clip=1.0)
    assert torch.amp.GradScaler.scale is original
