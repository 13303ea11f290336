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
    from engine.config import get_config
    from engine.model import Transformer

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
    from engine.config import get_config
    from engine.model import Transformer

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
