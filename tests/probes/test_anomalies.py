"""The anomalies probe: planted NaNs found at their module and step, loss spikes, log once."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
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


def _train(model: nn.Module, run: Path, steps: int, loss_of, step_box: list[int], lr: float = 1e-3) -> None:
    """`steps` SGD steps of `loss_of(model)` under the anomalies probe; `step_box[0]` is the step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    w = inspector.watch(model, run, probes=["anomalies"], optimizer=opt)
    for s in range(steps):
        step_box[0] = s
        loss = loss_of(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.step(loss=loss)
    w.close()


def _first_nonfinite(run: Path) -> tuple[int, str]:
    """(step, module) of the earliest non-finite activation recorded in `run`."""
    a = inspector.open_run(run).to_pandas("anomaly")
    first = a[a["kind"] == "nonfinite_activation"].sort_values("step").iloc[0]
    return int(first["step"]), str(first["module"])


def _mse(model: nn.Module) -> torch.Tensor:
    return nn.functional.mse_loss(model(torch.randn(4, 8)), torch.randn(4, 1))


def test_nan_in_a_known_module_is_reported_at_that_module_and_step(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 16), nn.Tanh()), nn.Linear(16, 1))
    step_box = [0]
    _poison_at(model[2][0], step_box, bad_step=7)   # the Linear inside the nested block
    caplog.set_level(logging.WARNING, logger="inspector")
    _train(model, tmp_path / "run", 12, _mse, step_box)
    a = inspector.open_run(tmp_path / "run").to_pandas("anomaly")
    first = a[a["kind"] == "nonfinite_activation"].sort_values("step").iloc[0]
    assert (first["step"], first["module"]) == (7, "2.0")
    loss_rows = a[a["kind"] == "nonfinite_loss"].sort_values("step")
    assert loss_rows["step"].iloc[0] == 7 and loss_rows["module"].iloc[0] == "2.0"
    # after step 7 the weights are NaN, so later steps keep reporting, but the log says it once
    logged = [r.getMessage() for r in caplog.records if "non-finite activation" in r.getMessage()]
    assert len([m for m in logged if "output of 2.0" in m]) == 1


def test_nan_in_the_engine_is_traced_to_the_module(tmp_path: Path) -> None:
    from inspector_engine.config import get_config
    from inspector_engine.model import Transformer

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

    def loss_of(m: nn.Module) -> torch.Tensor:
        tokens = torch.randint(0, cfg.vocab_size, (2, 16))
        logits = m(tokens)
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    _train(model, tmp_path / "run", 5, loss_of, step_box, lr=1e-4)
    assert _first_nonfinite(tmp_path / "run") == (3, target)


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
    _train(model, tmp_path / "run", 30, _mse, [0])
    assert len(inspector.open_run(tmp_path / "run").to_pandas("anomaly")) == 0


def test_nan_inside_an_expert_is_placed_at_the_expert_linear(tmp_path: Path) -> None:
    from inspector_engine.config import get_config
    from inspector_engine.model import Transformer

    cfg = get_config("debug")
    torch.manual_seed(0)
    model = Transformer(cfg)
    names = dict(model.named_modules())
    expert = "layers.1.ffn.experts.3"
    step_box = [0]
    # every expert runs here; its inner layers carry no hooks during training (hundreds of them in a
    # large MoE): the block is rerun to name the linear
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
    assert _first_nonfinite(tmp_path / "run") == (2, f"{expert}.w1")


class _CallCounter(nn.Module):
    """Identity that counts its calls in an attribute (module state that is not a buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def _poisoned_block_model() -> tuple[nn.Module, list[int]]:
    """Linear, then a block with BatchNorm and dropout whose first Linear outputs NaN at step 3."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16),
                          nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.Tanh(),
                                        _CallCounter()),
                          nn.Linear(16, 1))
    step_box = [0]
    _poison_at(model[1][0], step_box, bad_step=3)
    return model, step_box


def _forward_backward(model: nn.Module, step_box: list[int], w: inspector.Watch | None) -> None:
    gen = torch.Generator().manual_seed(1)
    for s in range(6):
        step_box[0] = s
        loss = model(torch.randn(4, 8, generator=gen)).pow(2).mean()
        loss.backward()
        if w is not None:
            w.step(loss=loss)


def test_rerunning_the_block_to_place_a_nan_leaves_no_trace(tmp_path: Path) -> None:
    watched, box_w = _poisoned_block_model()
    w = inspector.watch(watched, tmp_path / "run", probes=["anomalies", "timing", "activations"], every=1)
    hooks_before = [list(m._forward_hooks) + list(m._forward_pre_hooks) for m in watched.modules()]
    torch.manual_seed(42)
    _forward_backward(watched, box_w, w)
    rng_watched = torch.get_rng_state()
    hooks_after = [list(m._forward_hooks) + list(m._forward_pre_hooks) for m in watched.modules()]
    w.close()
    plain, box_p = _poisoned_block_model()
    torch.manual_seed(42)
    _forward_backward(plain, box_p, None)

    run = inspector.open_run(tmp_path / "run")
    assert _first_nonfinite(tmp_path / "run") == (3, "1.0")
    # the rerun drew no random numbers (dropout), moved no BatchNorm statistics, and no other probe
    # recorded it: step 3 has as many timing and histogram rows as step 2
    assert torch.equal(rng_watched, torch.get_rng_state())
    assert watched[1][4].calls == plain[1][4].calls == 6
    for name, buf in watched[1][1].named_buffers():
        torch.testing.assert_close(buf, dict(plain[1][1].named_buffers())[name], rtol=0, atol=0, equal_nan=True)
    for kind in ("timing", "histogram"):
        per_step = run.to_pandas(kind).groupby("step").size()
        assert per_step[3] == per_step[2], kind
    assert hooks_after == hooks_before  # every hook set aside for the rerun is back, in its order


def test_nan_in_inference_is_placed_at_its_block_without_a_rerun(tmp_path: Path) -> None:
    model, step_box = _poisoned_block_model()
    model.eval()
    step_box[0] = 3
    w = inspector.watch(model, tmp_path / "run", probes=["anomalies"])
    calls: list[int] = []
    model[1][0].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(torch.randn(4, 8))
    w.close()
    assert _first_nonfinite(tmp_path / "run") == (0, "1")  # a block may append to a KV cache: inference does not rerun it
    assert calls == [1]


def _engine_losses(watched: bool, run: Path) -> tuple[list[float], nn.Module]:
    """Three forward/backward steps of the debug engine, an Inf planted in layers.1's q at step 1."""
    from inspector_engine.config import get_config
    from inspector_engine.model import Transformer

    cfg = get_config("debug")
    torch.manual_seed(0)
    model = Transformer(cfg)
    step_box = [0]
    model.layers[1].attn.qk_capture.register_forward_hook(
        lambda mod, args, out: (out[0].clone().fill_(float("inf")), out[1]) if step_box[0] == 1 else None)
    w = inspector.watch(model, run, probes="all", every=1) if watched else None
    torch.manual_seed(1)
    losses = []
    for s in range(3):
        step_box[0] = s
        tokens = torch.randint(0, cfg.vocab_size, (2, 16))
        logits = model(tokens)
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()) + model.aux_loss()
        loss.backward()
        losses.append(float(loss.detach()))
        if w is not None:
            w.step(loss=loss)
    if w is not None:
        w.close()
    return losses, model


def test_the_engine_trains_on_unchanged_through_a_rerun(tmp_path: Path) -> None:
    watched_losses, watched = _engine_losses(True, tmp_path / "run")
    plain_losses, plain = _engine_losses(False, tmp_path / "unused")
    assert _first_nonfinite(tmp_path / "run") == (1, "layers.1.attn.qk_capture")
    # the rerun of layers.1 kept the routers' aux losses (set in forward) and load counters (buffers)
    assert watched_losses[0] == plain_losses[0] and watched_losses[2:] == plain_losses[2:]
    for (name, a), (_, b) in zip(watched.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=name)
    for (name, a), (_, b) in zip(watched.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, equal_nan=True, msg=name)


def test_nan_in_a_hugging_face_llama_is_traced_inside_its_decoder_layer(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).train()
    step_box = [0]
    _poison_at(model.model.layers[1].mlp.up_proj, step_box, bad_step=1)

    def loss_of(m: nn.Module) -> torch.Tensor:
        ids = torch.randint(0, 64, (2, 12))
        return m(input_ids=ids, labels=ids).loss
    _train(model, tmp_path / "run", 3, loss_of, step_box)
    assert _first_nonfinite(tmp_path / "run") == (1, "model.layers.1.mlp.up_proj")


@dataclass
class _BlockOut:
    aux: torch.Tensor      # a finite side output listed before the hidden state
    hidden: torch.Tensor


@dataclass(frozen=True)
class _ModelOut:
    aux_loss: torch.Tensor
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class _NamedOut(NamedTuple):
    aux_loss: torch.Tensor
    logits: torch.Tensor
    loss: torch.Tensor | None


class _Block(nn.Module):
    """A residual MLP block that returns a dataclass (finite `aux` first), or a dict of one."""

    def __init__(self, wrap: str) -> None:
        super().__init__()
        self.up, self.act, self.down = nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8)
        self.wrap = wrap

    def forward(self, x: torch.Tensor) -> Any:
        out = _BlockOut(aux=self.up.weight.pow(2).mean(), hidden=x + self.down(self.act(self.up(x))))
        return {"block": [out]} if self.wrap == "nested" else out


class _StructuredModel(nn.Module):
    """Blocks returning structured outputs; the model returns a dataclass, namedtuple or dict."""

    def __init__(self, wrap: str) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([_Block(wrap) for _ in range(3)])
        self.head = nn.Linear(8, 1)
        self.wrap = wrap

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        h, aux = self.inp(x), x.new_zeros(())
        for block in self.blocks:
            out = block(h)
            out = out["block"][0] if isinstance(out, dict) else out
            h, aux = out.hidden, aux + out.aux
        logits = self.head(h)
        loss = nn.functional.mse_loss(logits, y) + 1e-3 * aux
        if self.wrap == "namedtuple":
            return _NamedOut(aux, logits, loss)
        if self.wrap == "dict":
            return {"aux_loss": aux, "logits": logits, "loss": loss}
        return _ModelOut(aux_loss=aux, logits=logits, loss=loss)


def _loss(out: Any) -> torch.Tensor:
    return out["loss"] if isinstance(out, dict) else out.loss


@pytest.mark.parametrize("wrap", ["dataclass", "namedtuple", "dict", "nested"])
def test_nan_is_traced_through_dataclass_and_structured_outputs(tmp_path: Path, wrap: str) -> None:
    torch.manual_seed(0)
    model = _StructuredModel(wrap)
    step_box = [0]
    _poison_at(model.blocks[1].up, step_box, bad_step=4)
    gen = torch.Generator().manual_seed(0)
    _train(model, tmp_path / "run", 6, lambda m: _loss(m(torch.randn(4, 8, generator=gen),
                                                         torch.randn(4, 1, generator=gen))), step_box)
    assert _first_nonfinite(tmp_path / "run") == (4, "blocks.1.up")
    a = inspector.open_run(tmp_path / "run").to_pandas("anomaly")
    assert a[a["kind"] == "nonfinite_loss"].sort_values("step")["module"].iloc[0] == "blocks.1.up"


def test_dataclass_outputs_are_bit_identical_watched_and_unwatched(tmp_path: Path) -> None:
    def run(watched: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = _StructuredModel("dataclass")
        step_box = [0]
        _poison_at(model.blocks[1].up, step_box, bad_step=2)
        w = inspector.watch(model, tmp_path / "run", probes=["anomalies"]) if watched else None
        gen = torch.Generator().manual_seed(0)
        outs = []
        for s in range(4):
            step_box[0] = s
            out = model(torch.randn(4, 8, generator=gen), torch.randn(4, 1, generator=gen))
            out.loss.backward()
            outs += [out.logits.detach(), out.aux_loss.detach()] + [p.grad.clone() for p in model.parameters()]
            model.zero_grad()
            if w is not None:
                w.step(loss=out.loss)
        if w is not None:
            w.close()
        return outs

    for a, b in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_a_failing_activation_check_switches_itself_off_with_one_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import inspector.probes.anomalies as anomalies

    def broken(out: Any, limit: int = 16) -> list[torch.Tensor]:
        raise RuntimeError("walk failed")
    monkeypatch.setattr(anomalies, "floating_tensors", broken)
    caplog.set_level(logging.WARNING, logger="inspector")
    torch.manual_seed(0)
    model = _StructuredModel("dataclass")
    gen = torch.Generator().manual_seed(0)
    _train(model, tmp_path / "run", 3, lambda m: m(torch.randn(4, 8, generator=gen),
                                                   torch.randn(4, 1, generator=gen)).loss, [0])
    stopped = [r for r in caplog.records if "anomalies probe stopped" in r.getMessage()]
    assert len(stopped) == 1 and "walk failed" in stopped[0].getMessage()


def test_huge_but_finite_float64_activations_are_not_taken_for_inf(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Sequential(nn.Linear(16, 16), nn.Tanh()), nn.Linear(16, 1)).double()
    with torch.no_grad():
        model[0].weight.mul_(1e200)  # outputs ~1e200: finite in float64, Inf once summed in fp32
    _train(model, tmp_path / "run", 2, lambda m: m(torch.randn(4, 8, dtype=torch.float64)).tanh().mean(), [0], lr=0)
    assert len(inspector.open_run(tmp_path / "run").to_pandas("anomaly")) == 0


def test_the_cuda_witness_is_non_finite_when_any_tensor_of_an_output_is() -> None:
    from inspector.probes.anomalies import _witness

    ok, bad, huge = torch.ones(3), torch.tensor([1.0, float("nan")]), torch.full((2,), 1e300, dtype=torch.float64)
    assert torch.isfinite(_witness([ok])) and torch.isfinite(_witness([ok, huge]))
    assert not torch.isfinite(_witness([ok, bad])) and not torch.isfinite(_witness([bad.half(), ok]))
    assert not torch.isfinite(_witness([torch.tensor([float("inf")]), torch.tensor([-float("inf")])]))


def test_a_spike_during_the_fast_early_descent_is_judged_against_the_recent_level() -> None:
    """The window's median and spread are the descent's early in training; the recent level and the
    successive-difference noise are not: a loss back at its untrained level is a spike, and the
    descent itself (with batch noise) never is."""
    from inspector.probes.loss_spike import LossSpikeDetector

    rng = np.random.default_rng(0)
    # the `faults` sample's shape: 5.6 -> 3.3 in 25 steps, then -> 2.7 by step 60
    falling = np.concatenate([np.linspace(5.6, 3.3, 25), np.linspace(3.3, 2.7, 36)]) + rng.normal(0.0, 0.05, 61)
    healthy = LossSpikeDetector()
    assert [healthy.update(float(v)) for v in falling] == [None] * len(falling)
    assert healthy.healthy.z(5.6) < 6.0                      # the whole window alone would not call it
    said = healthy.update(5.6)
    assert said is not None and "recent healthy median" in said
    for loss in np.linspace(5.4, 3.6, 8):                   # the slow way back: one spike, not a second one
        assert healthy.update(float(loss)) is None and healthy.in_spike
    assert healthy.update(2.7) is None and not healthy.in_spike
