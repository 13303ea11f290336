"""Attention recomputation and reductions against plain numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inspector.probes.attention.collapse import CollapseTracker
from inspector.probes.attention.stats import Visibility, head_stats, layer_attention, row_stride


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_attention(q: np.ndarray, k: np.ndarray, scale: float, visible: np.ndarray,
                  softcap: float | None = None, sinks: np.ndarray | None = None) -> np.ndarray:
    """q [H,T,D], k [H,S,D], visible [T,S] bool -> probs [H,T,S] (float64)."""
    s = np.einsum("htd,hsd->hts", q.astype(np.float64), k.astype(np.float64)) * scale
    if softcap:
        s = np.tanh(s / softcap) * softcap
    s = np.where(visible[None], s, -np.inf)
    if sinks is not None:
        s = np.concatenate([s, np.broadcast_to(sinks[:, None, None], (*s.shape[:2], 1))], -1)
        return _np_softmax(s)[..., :-1]
    return _np_softmax(s)


def test_row_stride() -> None:
    assert row_stride(100, 128) == 1
    assert row_stride(128, 128) == 1
    assert row_stride(129, 128) == 2
    assert row_stride(1000, 128) == 8 and len(range(0, 1000, 8)) <= 128


@pytest.mark.parametrize("causal,window,offset", [(True, None, 0), (True, 3, 4), (False, None, 0), (True, None, 5)])
def test_visibility_and_probs_match_numpy(causal: bool, window: int | None, offset: int) -> None:
    torch.manual_seed(0)
    H, T, D = 3, 7, 8
    S = T + offset
    q, k = torch.randn(H, T, D) * 2, torch.randn(H, S, D) * 2
    key_mask = torch.ones(S, dtype=torch.bool)
    key_mask[1] = False
    vis = Visibility(causal=causal, q_offset=offset, window=window, key_mask_S=key_mask)
    probs, stats, stride = layer_attention(q, k, 0.3, vis, [0, 2], max_rows=128)
    t = np.arange(T)[:, None] + offset
    s = np.arange(S)[None, :]
    visible = np.ones((T, S), bool) & key_mask.numpy()[None]
    if causal:
        visible &= s <= t
    if window is not None:
        visible &= t - s < window
    ref = _np_attention(q.numpy()[[0, 2]], k.numpy()[[0, 2]], 0.3, visible)
    assert stride == 1 and probs.dtype == torch.float16
    np.testing.assert_allclose(probs.float().numpy(), ref, atol=1e-3)
    ent = -(np.where(ref > 0, ref * np.log(np.where(ref > 0, ref, 1)), 0)).sum(-1)
    np.testing.assert_allclose(stats[:, 0].numpy(), ent.mean(-1), rtol=1e-4)
    np.testing.assert_allclose(stats[:, 1].numpy(), ref.max(-1).mean(-1), rtol=1e-4)
    np.testing.assert_allclose(stats[:, 3].numpy(), visible.sum(-1).max())


def test_masks_bias_softcap_sinks_gqa_and_row_subsampling() -> None:
    torch.manual_seed(1)
    H, G, T, D = 4, 2, 10, 4
    q, k = torch.randn(H, T, D) * 3, torch.randn(G, T, D) * 3
    allowed = torch.rand(1, T, T) > 0.3
    allowed[..., 0] = True
    bias = torch.randn(H, T, T)
    sinks = torch.randn(H)
    vis = Visibility(allowed_HTS=allowed, bias_HTS=bias, softcap=5.0, sinks_H=sinks)
    probs, stats, stride = layer_attention(q, k, 0.5, vis, [1, 3], max_rows=4)
    assert stride == 3 and probs.shape == (2, 4, T)  # rows 0, 3, 6, 9
    kk = k.numpy()[[0, 1]]  # query heads 1 and 3 read key heads 0 and 1
    s = np.einsum("htd,hsd->hts", q.numpy()[[1, 3]].astype(np.float64), kk) * 0.5
    s = np.tanh(s / 5.0) * 5.0 + bias.numpy()[[1, 3]]
    s = np.where(allowed.numpy(), s, -np.inf)
    s = np.concatenate([s, np.broadcast_to(sinks.numpy()[[1, 3], None, None], (2, T, 1))], -1)
    ref = _np_softmax(s)[..., :-1][:, ::3]
    np.testing.assert_allclose(probs.float().numpy(), ref, atol=1e-3)


def test_head_chunks_give_the_same_result() -> None:
    torch.manual_seed(2)
    q, k = torch.randn(6, 9, 4), torch.randn(6, 9, 4)
    vis = Visibility(causal=True)
    big = layer_attention(q, k, 0.5, vis, [0, 1, 3, 5], max_rows=128)
    small = layer_attention(q, k, 0.5, vis, [0, 1, 3, 5], max_rows=128, budget=1)
    assert torch.equal(big[0], small[0]) and torch.allclose(big[1], small[1])


def test_fully_masked_rows_are_left_out_of_the_statistics() -> None:
    probs = torch.tensor([[[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]]])
    visible = torch.tensor([[2.0, 0.0]])
    stats = head_stats(probs, visible)
    np.testing.assert_allclose(stats[0, 0].item(), np.log(2), rtol=1e-6)
    np.testing.assert_allclose(stats[0, 1].item(), 0.5)
    assert stats[0, 2].item() == 0.0  # no row with >= 4 visible keys


def test_collapse_tracker_entropy_history_and_sink() -> None:
    tracker = CollapseTracker()
    for _ in range(3):
        assert not tracker.update("m", 0, 2.0, 0.2, 16).collapsed
    v = tracker.update("m", 0, 0.5, 0.5, 16)
    assert v.collapsed and v.newly and "median" in v.reason
    assert not tracker.update("m", 0, 0.5, 0.5, 16).newly  # still collapsed, not new
    assert not tracker.update("m", 1, 3.0, 0.95, 4).collapsed  # too few keys to call it a sink
    assert tracker.update("m", 2, 3.0, 0.95, 16).collapsed  # mass on one token, no history needed


def test_collapse_tracker_leaves_non_finite_samples_unjudged() -> None:
    tracker = CollapseTracker()
    for _ in range(3):
        tracker.update("m", 0, 2.0, 0.2, 16)
    nan = tracker.update("m", 0, float("nan"), float("nan"), 16)
    assert not nan.collapsed and not nan.newly and nan.reason == ""
    assert len(tracker.history[("m", 0)]) == 3          # the NaN did not enter the history
    assert tracker.update("m", 0, 0.5, 0.5, 16).newly   # a real collapse afterwards is still news


@pytest.mark.parametrize("S,window", [(1, None), (3, None), (40, None), (40, 41), (40, 39)])
def test_decode_row_over_its_whole_cache_matches_numpy(S: int, window: int | None) -> None:
    """A decode query (T=1, the last key column) sees every key unless a window hides some: the
    cheap all-visible path and the masked path give numpy's numbers either way."""
    torch.manual_seed(1)
    H, D = 4, 8
    q, k = torch.randn(H, 1, D) * 2, torch.randn(H, S, D) * 2
    vis = Visibility(causal=True, q_offset=S - 1, window=window)
    probs, stats, _ = layer_attention(q, k, 0.25, vis, [0, 1, 2, 3], max_rows=128)
    visible = np.ones((1, S), bool)
    if window is not None:
        visible &= (S - 1) - np.arange(S)[None, :] < window
    ref = _np_attention(q.numpy(), k.numpy(), 0.25, visible)
    np.testing.assert_allclose(probs.float().numpy(), ref, atol=1e-3)
    ent = -(np.where(ref > 0, ref * np.log(np.where(ref > 0, ref, 1)), 0)).sum(-1)
    np.testing.assert_allclose(stats[:, 0].numpy(), ent.mean(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats[:, 1].numpy(), ref.max(-1).mean(-1), rtol=1e-4)
    expected_sink = ref.max(-1).mean(-1) if visible.sum() >= 4 else np.zeros(H)
    np.testing.assert_allclose(stats[:, 2].numpy(), expected_sink, rtol=1e-4)
    np.testing.assert_allclose(stats[:, 3].numpy(), visible.sum())
