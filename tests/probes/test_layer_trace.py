"""The every-step layer trace of the gradients probe against values the test computes itself: gradient
norms per parameter before clipping, and the update/weight ratio from copies of the weights taken
around each optimizer step (the trace estimates it from a strided sample of each tensor)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import inspector
from inspector.probes.update_sketch import KEEP, _stride

STEPS = 12


def _train(run: Path, optimizer_cls, **opt_kw) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Train a small MLP with clipping; the test's own per-step gradient norms (before clipping) and
    exact update ratios per parameter."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 256), nn.GELU(), nn.Linear(256, 200), nn.GELU(), nn.Linear(200, 8))
    opt = optimizer_cls(model.parameters(), **opt_kw)
    gen = torch.Generator().manual_seed(1)
    grads, ratios = [], []
    with inspector.watch(model, run, optimizer=opt, probes=["gradients"], every=1000, hang_after_s=None) as w:
        for _ in range(STEPS):
            x, y = torch.randn(32, 96, generator=gen), torch.randn(32, 8, generator=gen)
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            grads.append({n: float(p.grad.double().norm()) for n, p in model.named_parameters()})
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
            before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
            opt.step()
            ratios.append({n: float((p.detach().double() - before[n]).norm() / before[n].norm())
                           for n, p in model.named_parameters()})
            w.step(loss=loss)
    return grads, ratios


@pytest.mark.parametrize("optimizer_cls, kw", [(torch.optim.AdamW, {"lr": 1e-3}),
                                               (torch.optim.SGD, {"lr": 0.5, "momentum": 0.9})])
def test_trace_has_every_step_pre_clip_norms_and_update_ratios(tmp_path: Path, optimizer_cls, kw) -> None:
    grads, ratios = _train(tmp_path / "run", optimizer_cls, **kw)
    trace = inspector.open_run(tmp_path / "run").to_pandas("layer_trace")
    assert sorted(trace["step"].unique()) == list(range(STEPS))          # every step, not the sampled ones
    for step in range(STEPS):
        rows = trace[trace["step"] == step].set_index("name")
        for name, norm in grads[step].items():
            assert rows.loc[name, "grad_norm"] == pytest.approx(norm, rel=1e-5)     # before the 0.01 clip
            exact = ratios[step][name]
            # tensors of at most KEEP elements are kept whole: exact; larger ones sampled: within a few %
            rel = 1e-5 if dict(_sizes())[name] <= KEEP else 0.05
            assert rows.loc[name, "update_ratio"] == pytest.approx(exact, rel=rel), (step, name)


def _sizes() -> list[tuple[str, int]]:
    model = nn.Sequential(nn.Linear(96, 256), nn.GELU(), nn.Linear(256, 200), nn.GELU(), nn.Linear(200, 8))
    return [(n, p.numel()) for n, p in model.named_parameters()]


def test_stride_samples_across_the_columns() -> None:
    assert _stride(100, 10) == 1
    s = _stride(256 * 200, 256)
    assert np.gcd(s, 256) == 1 and -(-256 * 200 // s) <= KEEP
    cols = {(k * s) % 256 for k in range(256 * 200 // s)}
    assert len(cols) == 256                                    # every column of the matrix is sampled


def test_without_optimizer_the_trace_has_norms_and_null_ratios(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    with inspector.watch(model, tmp_path / "run", probes=["gradients"], hang_after_s=None) as w:
        for _ in range(3):
            model.zero_grad()
            model(torch.ones(3, 4)).sum().backward()
            norm = float(model.weight.grad.norm())
            w.step()
    trace = inspector.open_run(tmp_path / "run").to_pandas("layer_trace")
    assert len(trace) == 6 and trace["update_ratio"].isna().all()
    assert trace[trace["name"] == "weight"]["grad_norm"].iloc[-1] == pytest.approx(norm, rel=1e-6)
