"""Small captures summarised together (`attention.batched`) give each capture exactly the numbers of
its own `summarise_attention`: grouped-query keys, a key mask, causal offsets."""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import pytest
import torch

from inspector.probes.attention.batched import (WRITER_THREAD_CELLS, LazySummary, batch_key, defer, on_writer_thread,
                                                own_visibility, summarise_together)
from inspector.probes.attention.stats import Visibility
from inspector.probes.attention.tiled import summarise_attention


def test_captures_summarised_together_equal_each_alone() -> None:
    g = torch.Generator().manual_seed(0)
    H, G, T, S, D = 4, 2, 1, 37, 8
    mask_S = torch.ones(S, dtype=torch.bool)
    mask_S[:5] = False                                  # a left-padded row of a batch
    vis = Visibility(causal=True, q_offset=S - T, key_mask_S=mask_S)
    heads = [0, 2, 3]
    layers = [(torch.randn(H, T, D, generator=g), torch.randn(G, S, D, generator=g)) for _ in range(3)]
    keys = {batch_key(q, k, 0.3, vis, heads, 256) for q, k in layers}
    assert len(keys) == 1 and None not in keys
    items = [defer(7, f"layers.{i}.qk", i, q, k, heads) for i, (q, k) in enumerate(layers)]
    for q, k in layers:
        q.add_(100.0)                                   # the model reuses the memory: the copies hold
        k.mul_(-1.0)
    got, spans = summarise_together(items, 0.3, own_visibility(vis), 256)
    for (q, k), span in zip(layers, spans):
        alone = summarise_attention(q - 100.0, -k, 0.3, vis, heads, 256)
        torch.testing.assert_close(got.stats[span], alone.stats, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.extra[span], alone.extra, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.pooled[span], alone.pooled, rtol=1e-3, atol=1e-4)
        assert torch.all(got.pooled[span][..., :5] == 0)          # padding keys get no weight


def test_large_pooled_or_biased_captures_are_computed_at_once() -> None:
    vis = Visibility(causal=True)
    q, k = torch.randn(4, 512, 8), torch.randn(4, 512, 8)
    assert batch_key(q, k, 1.0, vis, [0, 1, 2, 3], 256) is None                    # 1M cells, pooled
    small_q, small_k = torch.randn(4, 1, 8), torch.randn(4, 40, 8)
    biased = dataclasses.replace(vis, bias_HTS=torch.zeros(4, 1, 40))
    assert batch_key(small_q, small_k, 1.0, biased, [0, 1], 256) is None
    assert batch_key(small_q, small_k, 1.0, vis, [0, 1], 256) is not None


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread (what lets a summary run on the writer thread), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_lazy_summary_holds_the_numbers_of_summarise_together_as_of_the_call(one_thread: None) -> None:
    g = torch.Generator().manual_seed(1)
    vis = Visibility(causal=True, q_offset=30)
    layers = [(torch.randn(4, 1, 8, generator=g), torch.randn(4, 31, 8, generator=g)) for _ in range(2)]
    items = [defer(3, f"layers.{i}.qk", i, q, k, [0, 1, 3]) for i, (q, k) in enumerate(layers)]
    expected, spans = summarise_together(items, 0.5, vis, 256)
    lazy = LazySummary(items, 0.5, vis, 256)
    for q, k in layers:
        q.zero_()                                        # the copies were taken at the call
        k.zero_()
    assert on_writer_thread(items)
    stats_F = torch.cat([expected.stats, expected.extra], -1).double().numpy()
    np.testing.assert_array_equal(lazy.part(1, (slice(None), 0)).resolve(), stats_F[:, 0])
    np.testing.assert_array_equal(lazy.part(1, (slice(None), slice(5, None)), np.float32).resolve(),
                                  stats_F[:, 5:].astype(np.float32))
    for span in spans:
        np.testing.assert_array_equal(lazy.part(0, span).resolve(), expected.pooled[span].numpy())


def test_only_small_cpu_groups_on_one_thread_go_to_the_writer_thread(one_thread: None) -> None:
    small = [defer(0, "a", 0, torch.randn(8, 1, 8), torch.randn(8, 100, 8), list(range(8)))]
    assert on_writer_thread(small)
    torch.set_num_threads(2)                              # the writer's ops would start a pool of their own
    assert not on_writer_thread(small)
    torch.set_num_threads(1)
    cells = WRITER_THREAD_CELLS // (8 * 100) + 1          # one layer more than the grain size allows
    assert not on_writer_thread(small * cells)
    meta = [defer(0, "a", 0, torch.empty(8, 1, 8, device="meta"), torch.empty(8, 100, 8, device="meta"),
                  list(range(8)))]
    assert not on_writer_thread(meta)


def test_a_lazy_summary_that_fails_raises_the_same_error_for_every_part() -> None:
    items = [defer(0, "a", 0, torch.randn(2, 1, 4), torch.randn(2, 9, 5), [0, 1])]   # head sizes differ
    lazy = LazySummary(items, 1.0, Visibility(), 256)
    with pytest.raises(RuntimeError) as first:
        lazy.part(1, 0).resolve()
    with pytest.raises(RuntimeError) as again:
        lazy.part(0, slice(0, 2)).resolve()
    assert again.value is first.value


def test_defer_copies_what_the_model_owns_and_keeps_what_the_adapter_made() -> None:
    q_HTD, k_GSD = torch.randn(4, 1, 8), torch.randn(2, 9, 8)          # base tensors, not views
    model_owned = defer(0, "a", 0, q_HTD, k_GSD, [0, 1, 2, 3])
    assert model_owned.q_hTD.data_ptr() != q_HTD.data_ptr() and model_owned.k_hSD.data_ptr() != k_GSD.data_ptr()
    made = defer(0, "a", 0, q_HTD, k_GSD, [0, 1, 2, 3], owned=True)
    assert made.q_hTD is q_HTD                                          # (the grouped keys: an index copy)
    torch.testing.assert_close(made.k_hSD, k_GSD[[0, 0, 1, 1]])
    some = defer(0, "a", 0, q_HTD, k_GSD, [1, 2])                      # a slice of heads: still a copy
    q_HTD.add_(1.0)
    torch.testing.assert_close(some.q_hTD, q_HTD[1:3] - 1.0)
