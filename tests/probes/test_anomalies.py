"""The anomalies probe: planted NaNs found at their module and step, loss spikes, log once."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

import inspector


def _poison_at(module: nn.Module, step_box: list[int], bad_step: int) -> None:
    """Make `module` output NaN in one element when the training loop is at `bad_step`."""
    def hook(mod: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
        if step_box[0] == bad_step:
            out = out.clone()
            out.view(-1)[0] = float("nan")
        return out
    module.register_forward_hook(hook)


def _train(model: nn.Module, run: Path, steps: int, make_batch, step_box: list[int]) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    w = inspector.watch(model, run, probes=["anomalies"], optimizer=opt)
    for s in range(steps):
        step_box[0] = s
        x, y = make_batch()
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.step(loss=loss)
    w.close()


def test_nan_in_a_known_module_is_reported_at_that_module_and_step(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 16), nn.Tanh()), nn.Linear(16, 1))
    step_box = [0]
    _poison_at(model[2][0], step_box, bad_step=7)   # the Linear inside the nested block
    caplog.set_level(logging.WARNING, logger="inspector")
    _train(model, tmp_path / "run", 12, lambda: (torch.randn(4, 8), torch.randn(4, 1)), step_box)
    a = inspector.open_run(tmp_path / "run").to_pandas("anomaly")
    first = a[a["kind"] == "nonfinite_activation"].sort_values("step").iloc[0]
    assert (first["step"], first["module"]) == (7, "2.0")
    loss_rows = a[a["kind"] == "nonfinite_loss"].sort_values("step")
    assert loss_rows["step"].iloc[0] == 7 and loss_rows["module"].iloc[0] == "2.0"
    # after step 7 the weights are NaN, so later steps keep reporting, but the log says it once
    logged = [r.getMessage() for r in caplog.records if "non-finite activation" in r.getMessage()]
    assert len([m for m in logged if "output of 2.0" in m]) == 1


def test_nan_in_the_engine_is_traced_to_the_module(tmp_path: Path) -> None:
    from engine.config import get_config
    from engine.model import Transformer

    cfg = get_config("debug")
    torch.manual_seed(0)
    model = Transformer(cfg)
    names = dict(model.named_modules())
    target = next(n for n in names if n.endswith("attn.qk_capture") and n.startswith("layers.1"))
    step_box = [0]

    def poison(mod: nn.Module, args: object, out: tuple[torch.Tensor, torch.Tensor]):
        if step_box[0] == 3:
            q, k = out
            q = q.clone()
            q[..., 0] = float("inf")
            return q, k
        return out
    names[target].register_forward_hook(poison)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    w = inspector.watch(model, tmp_path / "run", probes=["anomalies"], optimizer=opt)
    for s in range(5):
        step_box[0] = s
        tokens = torch.randint(0, cfg.vocab_size, (2, 16))
        logits = model(tokens)
        logits = logits[0] if isinstance(logits, tuple) else logits
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.step(loss=loss)
    w.close()
    a = inspector.open_run(tmp_path / "run").to_pandas("anomaly")
    first = a[a["kind"] == "nonfinite_activation"].sort_values("step").iloc[0]
    assert first["step"] == 3
    assert first["module"] == target


def test_loss_spike_is_flagged_once_at_its_step(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    w = inspector.watch(model, tmp_path / "run", probes=["anomalies"])
    gen = torch.Generator().manual_seed(0)
    for s in range(80):
        loss = 2.0 - s * 0.005 + 0.01 * torch.rand((), generator=gen).item()
        if s == 60:
            loss = 9.0
        w.step(loss=torch.tensor(loss))
    w.close()
    a = inspector.open_run(tmp_path / "run").to_pandas("anomaly")
    spikes = a[a["kind"] == "loss_spike"]
    assert spikes["step"].tolist() == [60]
    assert spikes["value"].iloc[0] == pytest.approx(9.0)


def test_healthy_training_reports_nothing(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    _train(model, tmp_path / "run", 30, lambda: (torch.randn(4, 8), torch.randn(4, 1)), [0])
    assert len(inspector.open_run(tmp_path / "run").to_pandas("anomaly")) == 0


def test_nan_inside_an_expert_is_placed_at_the_expert(tmp_path: Path) -> None:
    from engine.config import get_config
    from engine.model import Transformer

    cfg = get_config("debug")
    torch.manual_seed(0)
    model = Transformer(cfg)
    names = dict(model.named_modules())
    expert = "layers.1.ffn.experts.3"
    step_box = [0]
    # every expert runs here: a NaN from its first linear must be traced to the expert, whose inner
    # layers carry no hooks of their own (hundreds of them in a large MoE)
    model.layers[1].ffn.router.register_forward_hook(
        lambda mod, args, out: (out[0], out[1], torch.full_like(out[2], 3)) if step_box[0] == 2 else None)
    _poison_at(names[f"{expert}.w1"], step_box, bad_step=2)
    w = inspector.watch(model, tmp_path / "run", probes=["anomalies"], optimizer=torch.optim.SGD(model.parameters(), lr=0))
    for s in range(4):
        step_box[0] = s
        tokens = torch.randint(0, cfg.vocab_size, (2, 16))
        loss = model(tokens).float().mean()
        loss.backward()
        w.ctx.optimizer.step()
        w.ctx.optimizer.zero_grad()
        w.step(loss=loss)
    w.close()
    a = inspector.open_run(tmp_path / "run").to_pandas("anomaly")
    first = a[a["kind"] == "nonfinite_activation"].sort_values("step").iloc[0]
    assert (first["step"], first["module"]) == (2, expert)
