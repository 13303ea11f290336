"""Small captures of one step computed together: a decode row of every layer.

Summarising one layer's attention of one decode row is some thirty small tensor ops whatever its
size, so on a small model the ops' fixed cost, not their arithmetic, is what an inference watch adds
to a sampled iteration. A capture whose whole map has at most `BATCH_CELLS` cells (and that needs no
pooling) is kept (a copy of its queries and keys, as of the call) until the step ends; the captures
of that step with the same shapes, scale and visibility are then summarised as one: their heads
side by side, each with its own keys, so every number equals the one-at-a-time summary's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch

from inspector.probes.attention.stats import Visibility, head_index
from inspector.probes.attention.tiled import TiledAttention, pool_sizes, summarise_attention

BATCH_CELLS = 1 << 16
"""heads × query rows × keys at most for a capture to wait for its step's others."""


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


def defer(step: int, name: str, layer: int, q_HTD: torch.Tensor, k_GSD: torch.Tensor, heads: list[int]) -> Deferred:
    """Copy the sampled heads' queries and keys (the model may reuse that memory later in the step)."""
    H, G = q_HTD.shape[0], k_GSD.shape[0]
    group = max(H // max(G, 1), 1)
    q_hTD = q_HTD[head_index(heads, q_HTD.device)]
    k_hSD = k_GSD[head_index([h // group for h in heads], k_GSD.device)]
    # a slice is a view of the model's memory, an index tensor a copy already
    return Deferred(step, name, layer, heads, q_hTD.clone() if q_hTD._base is not None else q_hTD,
                    k_hSD.clone() if k_hSD._base is not None else k_hSD)


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
