"""The attention probe on our engine (QKCapture taps), toy taps and a plain MLP."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import inspector
from inspector_engine.config import get_config
from inspector_engine.model import KVCache, Transformer
from inspector.probes import PROBES, ProbeContext, Sampling
from inspector.store.recorder import Recorder


def _np_causal_softmax(q: np.ndarray, k: np.ndarray, scale: float, pad: int = 0) -> np.ndarray:
    """q [H,T,D], k [H,S,D]; queries are the last T of S keys; the first `pad` keys are padding."""
    T, S = q.shape[1], k.shape[1]
    s = np.einsum("htd,hsd->hts", q.astype(np.float64), k.astype(np.float64)) * scale
    visible = (np.arange(S)[None, :] <= np.arange(S - T, S)[:, None]) & (np.arange(S)[None, :] >= pad)
    s = np.where(visible[None], s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _tap_recorder(model: nn.Module) -> tuple[dict[str, list], list]:
    """Our own forward hooks on the QKCapture taps: q, k of batch element 0 and the scale, per call."""
    seen: dict[str, list] = {}
    handles = []
    for name, m in model.named_modules():
        if type(m).__name__ == "QKCapture":
            def hook(mod, args, out, name=name):
                seen.setdefault(name, []).append(
                    (args[0][0].detach().numpy().copy(), args[1][0].detach().numpy().copy(), mod.softmax_scale))
            handles.append(m.register_forward_hook(hook))
    return seen, handles


def _probe(model: nn.Module, run: Path, **sampling: object) -> tuple[object, Recorder]:
    """The attention probe attached through a ProbeContext of our own (to set max_attention_rows)."""
    recorder = Recorder(run)
    probe = PROBES["attention"]()
    assert probe.attach(ProbeContext(model=model, recorder=recorder, sampling=Sampling.build(**sampling))) is None
    return probe, recorder


def test_engine_maps_equal_numpy_recomputation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(get_config("debug"))
    tokens = torch.randint(0, 256, (2, 12))
    seen, handles = _tap_recorder(model)
    before = model(tokens)
    w = inspector.watch(model, tmp_path / "run", probes=["attention"], every=1)
    with_probe = model(tokens)
    w.step()
    w.close()
    assert torch.equal(before, with_probe)
    assert torch.equal(model(tokens), before)
    for h in handles:
        h.remove()
    r = inspector.open_run(tmp_path / "run")
    for layer, name in enumerate(["layers.0.attn.qk_capture", "layers.1.attn.qk_capture"]):
        q, k, scale = seen[name][1]
        ref = _np_causal_softmax(q, k, scale)
        probs, row = r.fetch(step=0, layer=layer)
        assert row["name"] == name and row["heads"] == [0, 1, 2, 3] and row["row_stride"] == 1
        assert probs.dtype == np.float16 and probs.shape == (4, 12, 12)
        np.testing.assert_allclose(probs.astype(np.float64), ref, atol=2e-3)
        np.testing.assert_allclose(probs.astype(np.float64).sum(-1), 1.0, atol=5e-3)
        assert not np.triu(probs.astype(np.float64), k=1).any()  # future keys are exactly 0
    stats = r.to_pandas("attention_stats")
    assert len(stats) == 8 and set(stats["head"]) == {0, 1, 2, 3}
    q, k, scale = seen["layers.1.attn.qk_capture"][1]
    ref = _np_causal_softmax(q, k, scale)
    ent = -(np.where(ref > 0, ref * np.log(np.where(ref > 0, ref, 1)), 0)).sum(-1).mean(-1)
    got = stats[stats["layer"] == 1].sort_values("head")
    np.testing.assert_allclose(got["entropy"], ent, rtol=1e-4)
    np.testing.assert_allclose(got["max_weight"], ref.max(-1).mean(-1), rtol=1e-4)


def test_long_maps_are_pooled_and_stats_cover_every_row(tmp_path: Path) -> None:
    """Above the size limit the map is pooled (pooling stated in its row), the statistics still
    cover every query row exactly, and the last position is kept as a full row."""
    torch.manual_seed(0)
    model = Transformer(get_config("debug"))
    seen, handles = _tap_recorder(model)
    probe, recorder = _probe(model, tmp_path / "run", every=1, max_attention_rows=5)
    model(torch.randint(0, 256, (1, 16)))
    probe.detach()
    recorder.close()
    for h in handles:
        h.remove()
    r = inspector.open_run(tmp_path / "run")
    probs, row = r.fetch(step=0, layer=0)
    assert (row["row_pool"], row["key_pool"], row["query_len"], row["key_len"]) == (4, 3, 16, 16)
    q, k, scale = seen["layers.0.attn.qk_capture"][0]
    ref = _np_causal_softmax(q, k, scale)                                   # [H, 16, 16]
    padded = np.zeros((ref.shape[0], 16, 18))
    padded[..., :16] = ref
    blocks = padded.reshape(ref.shape[0], 4, 4, 6, 3).sum((2, 4)) / 4      # weight per 3 keys, mean of 4 queries
    assert probs.shape == (4, 4, 6)
    np.testing.assert_allclose(probs.astype(np.float64), blocks, atol=2e-3)
    rows, rows_meta = r.fetch("attention_rows", step=0, layer=0)
    assert rows_meta["positions"] == [15] and rows.shape == (4, 1, 16)
    np.testing.assert_allclose(rows[:, 0].astype(np.float64), ref[:, 15], atol=2e-3)
    stats = r.to_pandas("attention_stats")
    got = stats[stats["layer"] == 0].sort_values("head")
    ent = -(np.where(ref > 0, ref * np.log(np.where(ref > 0, ref, 1)), 0)).sum(-1).mean(-1)
    np.testing.assert_allclose(got["entropy"], ent, rtol=1e-4)
    np.testing.assert_allclose(got["max_weight"], ref.max(-1).mean(-1), rtol=1e-4)
    np.testing.assert_allclose(got["sink_mass"], ref[..., :4].sum(-1).mean(-1), rtol=1e-4)
    assert (got["rows"] == 16).all() and (got["keys"] == 16).all()


def test_cached_decoding_with_left_padding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    short, long = KVCache.for_model(model, 1), KVCache.for_model(model, 1)
    with torch.no_grad():
        model(torch.randint(0, 256, (1, 3)), cache=short)
        model(torch.randint(0, 256, (1, 6)), cache=long)
        short.extend(long)  # row 0 now has 3 padding columns in front
        seen, handles = _tap_recorder(model)
        probe, recorder = _probe(model, tmp_path / "run", every=1)
        model(torch.randint(0, 256, (2, 1)), cache=short)
    probe.detach()
    recorder.close()
    for h in handles:
        h.remove()
    probs = inspector.open_run(tmp_path / "run").attention_map(step=0, layer=1)
    q, k, scale = seen["layers.1.attn.qk_capture"][0]
    assert probs.shape == (4, 1, 7)
    np.testing.assert_allclose(probs.astype(np.float64), _np_causal_softmax(q, k, scale, pad=3), atol=2e-3)
    assert not probs[:, :, :3].any()


def test_sampling_steps_layers_and_heads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(get_config("debug"))
    w = inspector.watch(model, tmp_path / "run", probes=["attention"], every={"attention": 3}, layers=[1], heads=[0, 2])
    for step in range(7):
        model(torch.randint(0, 256, (1, 8)))
        if step % 3 == 0:
            model(torch.randint(0, 256, (1, 8)))  # a second forward in a sampled step is not recorded again
        w.step()
    w.close()
    r = inspector.open_run(tmp_path / "run")
    assert r.blob_steps() == [0, 3, 6]
    for step in (0, 3, 6):
        rows = r.blob_rows(step=step)
        assert [(x["layer"], x["heads"]) for x in rows] == [(1, [0, 2])]
        assert r.attention_map(step=step, layer=1).shape == (2, 8, 8)
    stats = r.to_pandas("attention_stats")
    assert sorted(stats["step"].unique()) == [0, 3, 6]
    assert set(stats["layer"]) == {1} and set(stats["head"]) == {0, 2} and len(stats) == 6


class QKCapture(nn.Module):
    """A duck-typed tap of our own (same class name and attributes as the engine's)."""

    def __init__(self) -> None:
        super().__init__()
        self.softmax_scale, self.causal, self.window, self.key_mask = 0.5, False, None, None

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k


class ToyAttention(nn.Module):
    """q, k set from outside: `focus[h]` = how many keys head h concentrates on (0 = random)."""

    def __init__(self, heads: int = 4, T: int = 16, D: int = 8) -> None:
        super().__init__()
        self.tap = QKCapture()
        self.H, self.T, self.D = heads, T, D
        self.focus = [0] * heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, self.H, self.T, self.D, generator=g) * 0.3
        k = torch.randn(1, self.H, self.T, self.D, generator=g) * 0.3
        for h, n in enumerate(self.focus):
            if n:
                q[0, h] = 5.0
                k[0, h] = 0.0
                k[0, h, :n] = 5.0  # every query puts (almost) all its mass on the first n keys
        q, k = self.tap(q, k)
        return x + (q.sum() + k.sum()) * 0


def test_collapse_to_one_token_is_flagged_with_an_anomaly(tmp_path: Path) -> None:
    model = ToyAttention()
    model.focus = [0, 1, 0, 0]
    w = inspector.watch(model, tmp_path / "run", probes=["attention"], every=1)
    for _ in range(2):
        model(torch.zeros(1))
        w.step()
    w.close()
    r = inspector.open_run(tmp_path / "run")
    stats = r.to_pandas("attention_stats")
    assert stats[stats["collapsed"]][["step", "head"]].values.tolist() == [[0, 1], [1, 1]]
    assert (stats[stats["head"] == 1]["max_weight"] > 0.99).all()
    anomalies = r.to_pandas("anomaly")
    assert anomalies[["kind", "module", "step"]].values.tolist() == [["attention_collapse", "tap", 0]]
    assert "head 1" in anomalies["message"][0]


def test_entropy_falling_below_its_own_history_is_flagged(tmp_path: Path) -> None:
    model = ToyAttention()
    w = inspector.watch(model, tmp_path / "run", probes=["attention"], every=1)
    for step in range(6):
        model.focus = [0, 0, 2 if step >= 4 else 0, 0]  # head 2: uniform-ish, then on 2 of 16 keys
        model(torch.zeros(1))
        w.step()
    w.close()
    stats = inspector.open_run(tmp_path / "run").to_pandas("attention_stats")
    head2 = stats[stats["head"] == 2].sort_values("step")
    assert head2["collapsed"].tolist() == [False] * 4 + [True, True]
    assert (head2["max_weight"].iloc[4:] < 0.6).all()  # flagged by entropy, not by a one-token sink
    assert not stats[stats["head"] != 2]["collapsed"].any()
    anomalies = inspector.open_run(tmp_path / "run").to_pandas("anomaly")
    assert anomalies["step"].tolist() == [4] and "median" in anomalies["message"][0]


def test_plain_mlp_is_not_applicable(tmp_path: Path) -> None:
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    w = inspector.watch(mlp, tmp_path / "run", probes=["attention"], every=1)
    mlp(torch.ones(2, 4))
    w.step()
    w.close()
    assert "attention" not in w.probes
    assert "no attention modules found" in w.not_applicable["attention"]
    assert not mlp[0]._forward_hooks  # noqa: SLF001


def test_a_failing_capture_never_reaches_the_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = ToyAttention()
    model.tap.window = "not a number"  # makes the recomputation fail
    w = inspector.watch(model, tmp_path / "run", probes=["attention"], every=1)
    out = model(torch.zeros(1))
    w.step()
    w.close()
    assert torch.equal(out, torch.zeros(1))
    assert "attention probe skipped tap" in caplog.text
