"""The gradients probe against numpy on gradients and weights the test captures itself."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import inspector
from inspector.probes.gradients import GradientsProbe
from inspector.probes.grad_math import group_key, group_parameters


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(5, 6, generator=gen)
    x[:, 0] = 0.0  # -> the first column of the first weight's gradient is exactly zero
    return x, torch.randn(5, 3, generator=gen)


def _grads(model: nn.Module) -> dict[str, np.ndarray]:
    return {n: p.grad.detach().double().numpy().copy() for n, p in model.named_parameters()}


def _stats(run: Path):
    return inspector.open_run(run).to_pandas("grad_stats")


def _oracle(g: np.ndarray) -> dict[str, float]:
    return {"norm": np.linalg.norm(g), "mean": g.mean(), "var": g.var(), "max_abs": np.abs(g).max(),
            "zero_frac": np.mean(g == 0)}


def _check_row(row, g: np.ndarray) -> None:
    rms = np.sqrt(np.mean(g ** 2))
    for key, want in _oracle(g).items():
        slack = 1e-5 * rms if key == "mean" else 1e-12  # an fp32 sum of n values: error ~1e-7 n rms
        assert row[key] == pytest.approx(want, rel=1e-4, abs=slack), key


def test_stats_match_numpy_and_sampling_is_honoured_without_optimizer(tmp_path: Path) -> None:
    model = _mlp()
    gen = torch.Generator().manual_seed(1)
    w = inspector.watch(model, tmp_path / "run", probes=["gradients"], every={"gradients": 3})
    captured: dict[int, dict[str, np.ndarray]] = {}
    for s in range(8):
        model.zero_grad()
        x, y = _batch(gen)
        nn.functional.mse_loss(model(x), y).backward()
        captured[s] = _grads(model)
        w.step()
    w.close()
    df = _stats(tmp_path / "run")
    assert sorted(df["step"].unique()) == [0, 3, 6]  # nothing on the other steps
    assert df["update_ratio"].isna().all()           # no optimizer given
    for s in (0, 3, 6):
        rows = df[df["step"] == s].set_index("name")
        assert list(rows.index) == [n for n, _ in model.named_parameters()]
        for name, g in captured[s].items():
            _check_row(rows.loc[name], g)
            seen = np.stack([captured[t][name] for t in (0, 3, 6) if t <= s])
            assert rows.loc[name, "var_over_steps"] == pytest.approx(seen.var(axis=0).mean(), rel=1e-4, abs=1e-12)
    assert (df[df["name"] == "0.weight"]["zero_frac"] >= 16 / 96 - 1e-9).all()  # a zero input column
    norms = inspector.open_run(tmp_path / "run").to_pandas("scalar", names=["grad_norm/global"])
    assert norms["step"].tolist() == list(range(8))
    want = [np.sqrt(sum((g ** 2).sum() for g in captured[s].values())) for s in range(8)]
    np.testing.assert_allclose(norms["value"].to_numpy(), want, rtol=1e-5)


def test_engine_stats_and_update_ratio_match_weights_saved_around_the_step(tmp_path: Path) -> None:
    from inspector_engine.config import get_config
    from inspector_engine.model import Transformer

    cfg = get_config("debug")
    torch.manual_seed(0)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    w = inspector.watch(model, tmp_path / "run", probes=["gradients"], optimizer=opt, every={"gradients": 2})
    grads: dict[int, dict[str, np.ndarray]] = {}
    ratios: dict[int, dict[str, float]] = {}
    gen = torch.Generator().manual_seed(0)
    for s in range(3):
        tokens = torch.randint(0, cfg.vocab_size, (2, 12), generator=gen)
        logits = model(tokens)
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, cfg.vocab_size), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        grads[s] = _grads(model)
        before = {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()}
        opt.step()
        ratios[s] = {n: np.linalg.norm(p.detach().double().numpy() - before[n]) / np.linalg.norm(before[n])
                     for n, p in model.named_parameters()}
        w.step(loss=loss)
    w.close()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks  # noqa: SLF001
    df = _stats(tmp_path / "run")
    assert sorted(df["step"].unique()) == [0, 2]
    names = [n for n, _ in model.named_parameters()]
    assert len(names) <= 64 and set(df["name"]) == set(names)  # one group per parameter
    for s in (0, 2):
        rows = df[df["step"] == s].set_index("name")
        for name in names:
            _check_row(rows.loc[name], grads[s][name])
            assert rows.loc[name, "update_ratio"] == pytest.approx(ratios[s][name], rel=1e-5)


def test_parameters_are_grouped_by_layer_when_there_are_many(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(40)])  # 80 parameter tensors
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = inspector.watch(model, tmp_path / "run", probes=["gradients"], optimizer=opt, every=1)
    model(torch.randn(3, 4)).pow(2).sum().backward()
    grads = _grads(model)
    before = {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()}
    opt.step()
    w.step()
    w.close()
    df = _stats(tmp_path / "run").set_index("name")
    assert list(df.index) == [str(i) for i in range(40)]
    for layer in (0, 17, 39):
        g = np.concatenate([grads[f"{layer}.weight"].ravel(), grads[f"{layer}.bias"].ravel()])
        _check_row(df.loc[str(layer)], g)
        w0 = np.concatenate([before[f"{layer}.{k}"].ravel() for k in ("weight", "bias")])
        w1 = np.concatenate([p.detach().double().numpy().ravel() for p in model[layer].parameters()])
        assert df.loc[str(layer), "update_ratio"] == pytest.approx(np.linalg.norm(w1 - w0) / np.linalg.norm(w0),
                                                                   rel=1e-5)


def test_engine_tiny_groups_are_layers_and_top_level_modules() -> None:
    from inspector_engine.config import get_config
    from inspector_engine.model import Transformer

    names = [n for n, _ in Transformer(get_config("tiny")).named_parameters()]
    groups, of = group_parameters(names)
    assert len(names) > 64
    assert groups == ["embed", "layers.0", "layers.1", "layers.2", "layers.3", "norm", "head"]
    assert groups[of[names.index("layers.2.ffn.experts.5.w1.weight")]] == "layers.2"
    assert group_key("model.layers.3.mlp.up_proj.weight") == "model.layers.3"
    assert group_key("lm_head.weight") == "lm_head"


def test_norm_welford_fallback_for_large_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GradientsProbe, "elementwise_welford_max_params", 0)
    model = _mlp()
    gen = torch.Generator().manual_seed(2)
    w = inspector.watch(model, tmp_path / "run", probes=["gradients"], every={"gradients": 2})
    norms: list[dict[str, float]] = []
    for s in range(6):
        model.zero_grad()
        x, y = _batch(gen)
        nn.functional.mse_loss(model(x), y).backward()
        if s % 2 == 0:
            norms.append({n: np.linalg.norm(g) for n, g in _grads(model).items()})
        w.step()
    w.close()
    df = _stats(tmp_path / "run")
    last = df[df["step"] == 4].set_index("name")
    for name in norms[0]:
        want = np.var([n[name] for n in norms])
        assert last.loc[name, "var_over_steps"] == pytest.approx(want, rel=1e-4, abs=1e-12)


def _poison_grad_at(module: nn.Module, step_box: list[int], bad_step: int) -> None:
    """At `bad_step`, the gradient flowing back into `module`'s output gets a NaN."""
    def hook(mod: nn.Module, args: object, out: torch.Tensor) -> None:
        if step_box[0] == bad_step:
            def poison(g: torch.Tensor) -> torch.Tensor:
                g = g.clone()
                g.view(-1)[0] = float("nan")
                return g
            out.register_hook(poison)
    module.register_forward_hook(hook)


def test_nan_gradient_is_reported_at_its_module_and_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    step_box = [0]
    _poison_grad_at(model[2], step_box, bad_step=5)  # params of "2" and "0" get NaN grads; "4" stays finite
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    w = inspector.watch(model, tmp_path / "run", probes=["gradients"], optimizer=opt)
    for s in range(8):
        step_box[0] = s
        opt.zero_grad()
        model(torch.randn(6, 4)).pow(2).mean().backward()
        if s == 5:
            assert torch.isnan(model[0].weight.grad).any() and torch.isfinite(model[4].weight.grad).all()
        opt.step()
        w.step()
    w.close()
    r = inspector.open_run(tmp_path / "run")
    a = r.to_pandas("anomaly")
    bad = a[a["kind"] == "nonfinite_grad"].sort_values("step")
    assert (bad["step"].iloc[0], bad["module"].iloc[0]) == (5, "2")
    assert "2.bias" in bad["message"].iloc[0]
    norms = r.to_pandas("scalar", names=["grad_norm/global"]).set_index("step")["value"]
    assert np.isfinite(norms.loc[:4]).all() and np.isnan(norms.loc[5])


def test_exploding_and_vanishing_norms_are_reported_at_their_steps(tmp_path: Path) -> None:
    model = _mlp()
    gen = torch.Generator().manual_seed(3)
    w = inspector.watch(model, tmp_path / "run", probes=["gradients"], every={"gradients": 100})
    for s in range(45):
        model.zero_grad()
        x, y = _batch(gen)
        loss = nn.functional.mse_loss(model(x), y)
        scale = 1e4 if s == 30 else (0.0 if s > 35 else 1.0)
        (loss * scale).backward()
        w.step()
    w.close()
    a = inspector.open_run(tmp_path / "run").to_pandas("anomaly")
    assert a[a["kind"] == "exploding_grad"]["step"].tolist() == [30]
    assert a[a["kind"] == "vanishing_grad"]["step"].tolist() == [40]  # 36..40 are five steps of zero
    assert not (a["kind"] == "nonfinite_grad").any()


def test_close_leaves_no_hooks_and_a_frozen_model_is_not_applicable(tmp_path: Path) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = inspector.watch(model, tmp_path / "run", probes=["gradients"], optimizer=opt)
    assert opt._optimizer_step_pre_hooks  # noqa: SLF001
    w.close()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks  # noqa: SLF001
    frozen = _mlp().requires_grad_(False)
    w = inspector.watch(frozen, tmp_path / "run2", probes=["gradients"])
    assert "gradients" in w.not_applicable
    w.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_steps_never_synchronise_the_training_thread(tmp_path: Path) -> None:
    model = _mlp().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    w = inspector.watch(model, tmp_path / "run", probes=["gradients"], optimizer=opt, every=1)

    def step() -> None:
        opt.zero_grad()
        model(torch.randn(5, 6, device="cuda")).pow(2).mean().backward()
        opt.step()
        w.step()

    step()  # first step: pinned buffers and group layouts are set up
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    probe = w.probes["gradients"]
    w.close()
    assert not probe._failed  # noqa: SLF001 — a sync would have raised inside the probe and stopped it
    df = _stats(tmp_path / "run")
    assert sorted(df["step"].unique()) == list(range(5)) and df["update_ratio"].notna().all()


def test_float64_model_stats_match_numpy_at_float64_precision(tmp_path: Path) -> None:
    model = _mlp().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(4)
    w = inspector.watch(model, tmp_path / "run", probes=["gradients"], optimizer=opt, every=1)
    grads: dict[int, dict[str, np.ndarray]] = {}
    ratios: dict[int, dict[str, float]] = {}
    for s in range(3):
        x, y = _batch(gen)
        opt.zero_grad()
        nn.functional.mse_loss(model(x.double()), y.double()).backward()
        grads[s] = _grads(model)
        before = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
        opt.step()
        ratios[s] = {n: np.linalg.norm(p.detach().numpy() - before[n]) / np.linalg.norm(before[n])
                     for n, p in model.named_parameters()}
        w.step()
    probe = w.probes["gradients"]
    w.close()
    assert not probe._failed  # noqa: SLF001
    df = _stats(tmp_path / "run")
    assert sorted(df["step"].unique()) == [0, 1, 2]
    for s in range(3):
        rows = df[df["step"] == s].set_index("name")
        for name, g in grads[s].items():
            row = rows.loc[name]
            for key, want in _oracle(g).items():  # float64 end to end: far tighter than fp32 could give
                assert row[key] == pytest.approx(want, rel=1e-9, abs=1e-15), (s, name, key)
            seen = np.stack([grads[t][name] for t in range(s + 1)])
            assert row["var_over_steps"] == pytest.approx(seen.var(axis=0).mean(), rel=1e-9, abs=1e-15)
            assert row["update_ratio"] == pytest.approx(ratios[s][name], rel=1e-9)
    norms = inspector.open_run(tmp_path / "run").to_pandas("scalar", names=["grad_norm/global"])
    want = [np.sqrt(sum((g ** 2).sum() for g in grads[s].values())) for s in range(3)]
    np.testing.assert_allclose(norms["value"].to_numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_stats_match_numpy(tmp_path: Path, dtype: torch.dtype) -> None:
    model = _mlp().to(dtype)
    gen = torch.Generator().manual_seed(5)
    w = inspector.watch(model, tmp_path / "run", probes=["gradients"], every=1)
    grads: dict[int, dict[str, np.ndarray]] = {}
    for s in range(2):
        x, y = _batch(gen)
        model.zero_grad()
        nn.functional.mse_loss(model(x.to(dtype)).float(), y).backward()
        grads[s] = _grads(model)
        w.step()
    probe = w.probes["gradients"]
    w.close()
    assert not probe._failed  # noqa: SLF001
    df = _stats(tmp_path / "run")
    for s in range(2):
        rows = df[df["step"] == s].set_index("name")
        for name, g in grads[s].items():
            _check_row(rows.loc[name], g)


def test_mixed_float64_and_float32_parameters_are_measured(tmp_path: Path) -> None:
    model = _mlp()
    model[2].double()
    w = inspector.watch(model, tmp_path / "run", probes=["gradients"], every=1)
    x, _ = _batch(torch.Generator().manual_seed(6))
    model[2](model[1](model[0](x)).double()).pow(2).mean().backward()
    grads = _grads(model)
    w.step()
    probe = w.probes["gradients"]
    w.close()
    assert not probe._failed  # noqa: SLF001
    rows = _stats(tmp_path / "run").set_index("name")
    for name, g in grads.items():
        _check_row(rows.loc[name], g)
