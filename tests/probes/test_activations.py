"""The activations probe against numpy on module outputs the test captures with its own hooks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import inspector
from inspector.probes.activations import select_modules

BINS = 64


def _capture(model: nn.Module, names: list[str], store: dict[str, np.ndarray]) -> list:
    """Forward hooks of the test's own: the latest output of each named module, as float64 numpy."""
    mods = dict(model.named_modules())
    handles = []
    for name in names:
        def hook(mod: nn.Module, args: object, out: object, name: str = name) -> None:
            t = out[0] if isinstance(out, tuple) else out
            store[name] = t.detach().double().numpy().copy()
        handles.append(mods[name].register_forward_hook(hook))
    return handles


def _assert_histogram(x: np.ndarray, row) -> None:
    """Counts and under/overflow equal numpy's over [lo, hi]; a value within 1e-4 of a bin edge may
    fall on either side (float32 vs float64 rounding), so each such value may move one count."""
    x = x[np.isfinite(x)].ravel()
    lo, hi = row["lo"], row["hi"]
    want, _ = np.histogram(x, bins=BINS, range=(lo, hi))
    pos = (x - lo) / (hi - lo) * BINS
    near = int((np.abs(pos - np.round(pos)) < 1e-4).sum())
    counts = np.asarray(row["counts"])
    assert len(counts) == BINS
    assert np.abs(counts - want).sum() <= 2 * near, (counts, want)
    assert abs(row["underflow"] - (x < lo).sum()) <= near and abs(row["overflow"] - (x > hi).sum()) <= near
    assert counts.sum() + row["underflow"] + row["overflow"] == x.size


def _assert_stats(x: np.ndarray, row, saturated: float | None = None) -> None:
    fin = x[np.isfinite(x)]
    assert row["mean"] == pytest.approx(fin.mean(), rel=1e-4, abs=1e-6)
    assert row["std"] == pytest.approx(fin.std(), rel=1e-4, abs=1e-6)
    assert row["min"] == pytest.approx(fin.min(), rel=1e-6) and row["max"] == pytest.approx(fin.max(), rel=1e-6)
    assert row["nonfinite"] == x.size - fin.size
    units = x.reshape(-1, x.shape[-1])
    assert row["dead_frac"] == pytest.approx(np.mean((np.abs(units) <= 1e-8).all(axis=0)))
    if saturated is not None:
        assert row["saturated_frac"] == pytest.approx(saturated)


def _read(run: Path):
    r = inspector.open_run(run)
    return r.to_pandas("histogram"), r.to_pandas("activation_stats"), r.to_pandas("anomaly")


def test_plain_mlp_histograms_and_stats_match_numpy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh())
    with torch.no_grad():
        model[2].weight.mul_(8.0)  # drive the tanh into saturation
    names = ["0", "1", "2", "3"]
    assert [n for n, _ in select_modules(model)] == names
    outs: dict[str, np.ndarray] = {}
    captured: dict[int, dict[str, np.ndarray]] = {}
    _capture(model, names, outs)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    w = inspector.watch(model, tmp_path / "run", probes=["activations"], optimizer=opt, every={"activations": 2})
    gen = torch.Generator().manual_seed(0)
    for s in range(5):
        x = torch.randn(64, 8, generator=gen) * (1.0 if s == 0 else 3.0)  # later steps outgrow the first range
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        captured[s] = dict(outs)
    w.close()
    hist, stats, _ = _read(tmp_path / "run")
    assert sorted(hist["step"].unique()) == [0, 2, 4] and sorted(stats["step"].unique()) == [0, 2, 4]
    assert set(hist["name"]) == {f"activations/{n}" for n in names}
    for name in names:
        x0 = captured[0][name]
        width = x0.max() - x0.min()
        row0 = hist[(hist["name"] == f"activations/{name}") & (hist["step"] == 0)].iloc[0]
        assert row0["lo"] == pytest.approx(x0.min() - 0.1 * width, rel=1e-5)  # the first range: min/max + 10 %
        assert row0["hi"] == pytest.approx(x0.max() + 0.1 * width, rel=1e-5)
        for s in (2, 4):  # the range follows the wider inputs: it holds every value of its own step
            row = hist[(hist["name"] == f"activations/{name}") & (hist["step"] == s)].iloc[0]
            assert row["lo"] <= captured[s][name].min() and captured[s][name].max() <= row["hi"]
    for s in (0, 2, 4):
        h = hist[hist["step"] == s].set_index("name")
        st = stats[stats["step"] == s].set_index("name")
        for name in names:
            x = captured[s][name]
            _assert_histogram(x, h.loc[f"activations/{name}"])
            bounded = np.mean(np.abs(x) >= 0.99) if name == "3" else None
            _assert_stats(x, st.loc[name], saturated=bounded)
    assert (hist["underflow"] == 0).all() and (hist["overflow"] == 0).all()
    his = hist.pivot(index="name", columns="step", values="hi")
    assert (his[4] > his[0]).any()  # re-ranged as the values grew
    assert stats.set_index(["step", "name"]).loc[(4, "3"), "saturated_frac"] > 0.05


class _Planted(nn.Module):
    """Identity, but plants NaN, +inf, -inf and a few huge values into its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        flat = x.view(-1)
        flat[0], flat[1], flat[2] = float("nan"), float("inf"), -float("inf")
        flat[3:7] = 1e3
        return x


def test_nonfinite_values_are_counted_and_kept_out_of_histogram_and_stats(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), _Planted())
    outs: dict[str, np.ndarray] = {}
    _capture(model, ["1"], outs)
    w = inspector.watch(model, tmp_path / "run", probes=["activations"], every=1)
    captured = []
    for _ in range(2):
        with torch.no_grad():
            model(torch.randn(64, 8))
        captured.append(outs["1"])
        w.step()
    w.close()
    hist, stats, _ = _read(tmp_path / "run")
    for s, x in enumerate(captured):
        h = hist[(hist["step"] == s) & (hist["name"] == "activations/1")].iloc[0]
        st = stats[(stats["step"] == s) & (stats["name"] == "1")].iloc[0]
        assert st["nonfinite"] == 3
        fin = x[np.isfinite(x)]
        outliers = np.mean(np.abs(fin - fin.mean()) > 6 * fin.std())
        assert outliers == pytest.approx(4 / fin.size)
        _assert_stats(x, st, saturated=outliers)
        _assert_histogram(x, h)


def test_dead_relu_is_reported_as_a_dead_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    w = inspector.watch(model, tmp_path / "run", probes=["activations"], every={"activations": 2})
    for _ in range(8):
        model(torch.randn(32, 8)).sum().backward()
        w.step()
    w.close()
    _, stats, anomalies = _read(tmp_path / "run")
    relu = stats[stats["name"] == "1"]
    assert relu["step"].tolist() == [0, 2, 4, 6] and (relu["dead_frac"] == 1.0).all()
    assert (stats[stats["name"] == "0"]["dead_frac"] == 0.0).all()  # negative, but not zero
    dead = anomalies[anomalies["kind"] == "dead_layer"].sort_values("step")
    # dead from its first sample: flagged once the second confirms it, with step 0 as the onset, then
    # recorded on every sampled step it stays dead
    assert dead["module"].tolist() == ["1"] * 4 and dead["step"].tolist() == [0, 2, 4, 6]
    assert "from step 0 on" in dead["message"].iloc[0] and "still dead" in dead["message"].iloc[-1]


def test_engine_blocks_and_their_children_are_recorded(tmp_path: Path) -> None:
    from inspector_engine.config import get_config
    from inspector_engine.model import Transformer

    cfg = get_config("debug")
    torch.manual_seed(0)
    model = Transformer(cfg)
    expected = [f"layers.{i}{c}" for i in range(cfg.n_layers) for c in ("", ".attn_norm", ".attn", ".ffn_norm", ".ffn")]
    assert [n for n, _ in select_modules(model)] == expected
    outs: dict[str, np.ndarray] = {}
    captured: dict[int, dict[str, np.ndarray]] = {}
    _capture(model, expected, outs)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    w = inspector.watch(model, tmp_path / "run", probes=["activations"], optimizer=opt, every={"activations": 2})
    gen = torch.Generator().manual_seed(0)
    for s in range(3):
        tokens = torch.randint(0, cfg.vocab_size, (2, 8), generator=gen)
        opt.zero_grad()
        model(tokens).logsumexp(-1).mean().backward()
        opt.step()
        captured[s] = dict(outs)
    w.close()
    hist, stats, _ = _read(tmp_path / "run")
    assert sorted(stats["step"].unique()) == [0, 2]
    assert stats[stats["step"] == 2]["name"].tolist() == expected
    for s in (0, 2):
        h = hist[hist["step"] == s].set_index("name")
        st = stats[stats["step"] == s].set_index("name")
        for name in expected:
            _assert_histogram(captured[s][name], h.loc[f"activations/{name}"])
            _assert_stats(captured[s][name], st.loc[name])


def test_many_blocks_are_capped_evenly_and_close_leaves_no_hooks(tmp_path: Path) -> None:
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=12, enable_nested_tensor=False)
    picked = [n for n, _ in select_modules(model, cap=20)]
    assert len(picked) <= 20
    assert picked[0] == "layers.0" and "layers.11" in picked
    assert not any("dropout" in n for n in picked)
    w = inspector.watch(model, tmp_path / "run", probes=["activations"])
    assert any(m._forward_hooks for m in model.modules())  # noqa: SLF001
    model(torch.randn(2, 5, 16))
    w.step()
    w.close()
    assert not any(m._forward_hooks for m in model.modules())  # noqa: SLF001
    _, stats, _ = _read(tmp_path / "run")
    assert stats["name"].iloc[0] == "layers.0" and "layers.0.self_attn" in set(stats["name"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_steps_never_synchronise_the_training_thread(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).cuda()
    w = inspector.watch(model, tmp_path / "run", probes=["activations"], every=1)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):  # step 0 warms the ranges up on the device, later steps use histc
            model(torch.randn(16, 8, device="cuda")).sum().backward()
            w.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    probe = w.probes["activations"]
    w.close()
    assert not probe._failed and not probe._broken  # noqa: SLF001
    _, stats, _ = _read(tmp_path / "run")
    assert sorted(stats["step"].unique()) == [0, 1, 2, 3]
