"""Small captures of one step computed together: a decode row of every layer.

Summarising one layer's attention of one decode row is some thirty small tensor ops whatever its
size, so on a small model the ops' fixed cost, not their arithmetic, is what an inference watch adds
to a sampled iteration. A capture whose whole map has at most `BATCH_CELLS` cells (and that needs no
pooling) is kept (a copy of its queries and keys, as of the call) until the step ends; the captures
of that step with the same shapes, scale and visibility are then summarised as one: their heads
side by side, each with its own keys, so every number equals the one-at-a-time summary's.

Under an inference watch serving on one intra-op thread, a small group of CPU captures is not even
summarised on the serving thread: its records carry a `LazySummary` that the Recorder's writer
thread computes when it writes them (`on_writer_thread`). The serving thread only copies the queries and keys (as of the
call); torch releases the GIL inside each op, so the summary runs beside the model on another core.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, NamedTuple

import numpy as np
import torch

from inspector.probes.attention.stats import Visibility, head_index
from inspector.probes.attention.tiled import TiledAttention, pool_sizes, summarise_attention
from inspector.probes.host import HostSlice

BATCH_CELLS = 1 << 16
"""heads × query rows × keys at most for a capture to wait for its step's others."""

WRITER_THREAD_CELLS = 1 << 15
"""heads × query rows × keys at most, over a whole group, for it to be summarised on the writer
thread: a decode row of every layer of a small model, so the writer's share stays small and its
other records are not held up."""


class Deferred(NamedTuple):
    """One capture waiting for the end of its step: the sampled heads' queries and their keys."""

    step: int
    name: str
    layer: int
    heads: list[int]
    q_hTD: torch.Tensor       # copies, as of the call
    k_hSD: torch.Tensor       # the key head of each sampled query head (grouped-query keys repeated)


def batch_key(q_HTD: torch.Tensor, k_GSD: torch.Tensor, scale: float, vis: Visibility, heads: list[int],
              max_rows: int) -> tuple[Any, ...] | None:
    """What captures must share to be summarised together; None when this one is computed at once
    (too large, pooled, or a visibility with per-head masks, biases or sinks)."""
    T, S = q_HTD.shape[1], k_GSD.shape[1]
    if (len(heads) * T * S > BATCH_CELLS or pool_sizes(T, S, max_rows) != (1, 1) or vis.allowed_HTS is not None
            or vis.bias_HTS is not None or vis.sinks_H is not None):
        return None
    mask = vis.key_mask_S
    mask_key = None if mask is None else (mask.data_ptr(), tuple(mask.shape), tuple(mask.stride()), str(mask.device))
    return (T, S, q_HTD.shape[2], k_GSD.shape[2], q_HTD.dtype, k_GSD.dtype, str(q_HTD.device), float(scale),
            vis.causal, vis.q_offset, vis.window, vis.softcap, mask_key)


def defer(step: int, name: str, layer: int, q_HTD: torch.Tensor, k_GSD: torch.Tensor, heads: list[int], *,
          owned: bool = False) -> Deferred:
    """Copy the sampled heads' queries and keys (the model may reuse that memory later in the step);
    `owned`: they are the caller's own tensors (made for this capture), kept as they are."""
    H, G = q_HTD.shape[0], k_GSD.shape[0]
    group = max(H // max(G, 1), 1)
    return Deferred(step, name, layer, heads, _kept(q_HTD, heads, owned), _kept(k_GSD, [h // group for h in heads], owned))


def _kept(t_H: torch.Tensor, heads: list[int], owned: bool) -> torch.Tensor:
    """Rows `heads` of `t_H` as of now: a copy, unless `owned` or the selection copied already."""
    if heads == list(range(t_H.shape[0])):
        return t_H if owned else t_H.clone()
    t_h = t_H[head_index(heads, t_H.device)]
    # a slice is a view of the model's memory, an index tensor a copy already
    return t_h.clone() if t_h._base is not None and not owned else t_h


def own_visibility(vis: Visibility) -> Visibility:
    """`vis` with a copy of its key mask (held until the step ends)."""
    if vis.key_mask_S is None:
        return vis
    return dataclasses.replace(vis, key_mask_S=vis.key_mask_S.clone())


def summarise_together(items: list[Deferred], scale: float, vis: Visibility,
                       max_rows: int) -> tuple[TiledAttention, list[slice]]:
    """`summarise_attention` of every item computed as one: (the summary of all their heads side by
    side, the slice of each item's heads in it)."""
    q_nTD = torch.cat([it.q_hTD for it in items]) if len(items) > 1 else items[0].q_hTD
    k_nSD = torch.cat([it.k_hSD for it in items]) if len(items) > 1 else items[0].k_hSD
    got = summarise_attention(q_nTD, k_nSD, scale, vis, list(range(q_nTD.shape[0])), max_rows)
    spans, lo = [], 0
    for it in items:
        spans.append(slice(lo, lo + len(it.heads)))
        lo += len(it.heads)
    return got, spans


def on_writer_thread(items: list[Deferred]) -> bool:
    """True when a group may be summarised on the Recorder's writer thread (`LazySummary`): CPU
    tensors, at most `WRITER_THREAD_CELLS` cells in all, and torch on one intra-op thread
    (`torch.set_num_threads(1)`). With more, a torch op on another thread starts a thread pool of
    its own beside the model's (measured: MKL's batched matmul adds a worker thread; why `HostValue`
    keeps torch off the writer thread), and the serving thread's own pool uses the other cores."""
    if torch.get_num_threads() != 1:
        return False
    cells = 0
    for it in items:
        if it.q_hTD.device.type != "cpu":
            return False
        cells += it.q_hTD.shape[0] * it.q_hTD.shape[1] * it.k_hSD.shape[1]
    return cells <= WRITER_THREAD_CELLS


class LazySummary:
    """`summarise_together` of one group, computed once, the first time a record that holds a
    `part` of it is written (on the Recorder's writer thread): the map [n, T, S] as float16 and the
    statistics [n, len(STAT_FIELDS) + len(EXTRA_FIELDS)] as float64, heads of the items in order.
    The captures are dropped once it is computed; an error is kept and raised by every part."""

    def __init__(self, items: list[Deferred], scale: float, vis: Visibility, max_rows: int) -> None:
        self._args: tuple[list[Deferred], float, Visibility, int] | None = (items, scale, vis, max_rows)
        self._out: tuple[np.ndarray, np.ndarray] | None = None
        self._error: Exception | None = None
        self._lock = threading.Lock()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(map, statistics), computed now if they are not yet."""
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._out is None:
                assert self._args is not None
                items, scale, vis, max_rows = self._args
                try:
                    with torch.no_grad(), torch.autocast("cpu", enabled=False):
                        got, _ = summarise_together(items, scale, vis, max_rows)
                        stats = torch.cat([got.stats, got.extra], -1)
                    self._out = (got.pooled.numpy(), stats.numpy().astype(np.float64))
                except Exception as exc:
                    self._error = exc
                    raise
                finally:
                    self._args = None
            return self._out

    def part(self, which: int, index: Any, dtype: Any = None) -> HostSlice:
        """A deferred value: `arrays()[which][index]`, cast to `dtype` if given."""
        return HostSlice(_SummaryArray(self, which), index, dtype)


class _SummaryArray:
    """`LazySummary.arrays()[which]` as a deferred value (what `HostSlice` slices)."""

    __slots__ = ("summary", "which")

    def __init__(self, summary: LazySummary, which: int) -> None:
        self.summary, self.which = summary, which

    def ready(self) -> bool:
        """Always: it is computed when resolved."""
        return True

    def resolve(self) -> np.ndarray:
        """The array, computing the summary first if it is not yet."""
        return self.summary.arrays()[self.which]
