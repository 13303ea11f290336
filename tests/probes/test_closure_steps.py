"""`optimizer.step(closure)` (as Lightning and LBFGS call it): gradients are read after the closure,
and the closure's forward/backward are not counted as optimizer time."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

import inspector


def test_closure_steps_are_measured_after_backward(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    model[0].register_forward_pre_hook(lambda *_: time.sleep(0.03))   # a slow forward, inside the closure
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = inspector.watch(model, tmp_path / "run", optimizer=opt, probes=["gradients", "timing"], every=1)
    norms = []
    for _ in range(4):
        x = torch.randn(8, 6)

        def closure():
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            norms.append(float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()))
            return loss

        loss = opt.step(closure)
        w.step(loss=loss)
    w.close()
    run = inspector.open_run(tmp_path / "run")
    gnorm = run.to_pandas("scalar", names=["grad_norm/global"]).sort_values("step")
    assert gnorm["step"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(gnorm["value"], norms, rtol=1e-5)
    assert sorted(run.to_pandas("grad_stats")["step"].unique()) == [0, 1, 2, 3]
    timing = run.to_pandas("timing")
    fwd = timing[(timing["name"] == "model") & (timing["phase"] == "forward")]["ms"]
    opt_ms = timing[timing["phase"] == "optimizer"]["ms"]
    assert (fwd >= 30).all() and (opt_ms < 15).all(), (fwd.tolist(), opt_ms.tolist())
