"""Pure tensor functions of the attention probe: which keys a query row sees, the recomputed
probabilities `softmax(q·kᵀ·scale + mask)`, and per-head entropy / max-weight reductions.

Everything here runs on the device of its inputs and never synchronises with it. Masked
positions get the float32 minimum (not -inf), the way Hugging Face's eager attention does, so
a row with no visible key is uniform rather than NaN; such rows are left out of the statistics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_MIN = torch.finfo(torch.float32).min
STAT_FIELDS = ("entropy", "max_weight", "sink_weight", "max_visible")
"""Columns of the per-head statistics tensor `head_stats` returns, in order."""

SINK_MIN_VISIBLE = 4
"""Rows with fewer visible keys (the first rows of causal attention) are left out of `sink_weight`."""


@dataclass
class Visibility:
    """Which key columns each query row of one sequence may attend to, plus additive biases.

    Query row `t` sits at key column `q_offset + t`. A key `s` is visible iff every given
    constraint allows it: `causal` (s <= q_offset + t), `window` (q_offset + t - s < window),
    `key_mask_S` (bool, True = a real key), `allowed_HTS` (bool, True = attend; head dim 1 or H)
    and `bias_HTS` (float, added to the scores; entries at or below half the dtype's minimum count
    as masked). `softcap` applies `tanh(x / c) * c` to the scaled scores first; `sinks_H` are
    per-head logits of a virtual key that takes part in the softmax but is not returned.
    """

    causal: bool = False
    q_offset: int = 0
    window: int | None = None
    key_mask_S: torch.Tensor | None = None
    allowed_HTS: torch.Tensor | None = None
    bias_HTS: torch.Tensor | None = None
    softcap: float | None = None
    sinks_H: torch.Tensor | None = None


def row_stride(T: int, max_rows: int) -> int:
    """Keep every `row_stride`-th query row so that at most `max_rows` rows remain (1 = all)."""
    if max_rows <= 0 or T <= max_rows:
        return 1
    return math.ceil(T / max_rows)


def _heads(t: torch.Tensor, heads: slice | torch.Tensor) -> torch.Tensor:
    """Select heads of a [1 or H, ...] tensor (a broadcast head dim of 1 is kept)."""
    return t if t.shape[0] == 1 else t[heads]


def row_mask(vis: Visibility, T: int, S: int, stride: int, heads: slice | torch.Tensor,
             device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """For the kept rows `0, stride, 2·stride, …`: (allowed [1|h, R, S] bool or None, bias [1|h, R, S] or None)."""
    allowed: torch.Tensor | None = None
    last = vis.q_offset + T - 1                       # key column of the last query row
    hides = (vis.causal and vis.q_offset < S - 1) or (vis.window is not None and last >= vis.window)
    if hides:                                         # (a decode row over its whole cache hides nothing)
        pos_R1 = torch.arange(vis.q_offset, vis.q_offset + T, stride, device=device).unsqueeze(1)
        col_1S = torch.arange(S, device=device).unsqueeze(0)
        allowed_RS = torch.ones(pos_R1.shape[0], S, dtype=torch.bool, device=device)
        if vis.causal:
            allowed_RS = allowed_RS & (col_1S <= pos_R1)
        if vis.window is not None:
            allowed_RS = allowed_RS & (pos_R1 - col_1S < vis.window)
        allowed = allowed_RS.unsqueeze(0)
    if vis.key_mask_S is not None:
        km_11S = vis.key_mask_S.to(device=device, dtype=torch.bool).view(1, 1, S)
        allowed = km_11S if allowed is None else allowed & km_11S
    if vis.allowed_HTS is not None:
        given = _heads(vis.allowed_HTS, heads)[:, ::stride, :S].to(device=device, dtype=torch.bool)
        allowed = given if allowed is None else allowed & given
    bias = None
    if vis.bias_HTS is not None:
        bias = _heads(vis.bias_HTS, heads)[:, ::stride, :S].to(device)
    return allowed, bias


def attention_probs(q_hRD: torch.Tensor, k_hSD: torch.Tensor, scale: float, allowed: torch.Tensor | None,
                    bias: torch.Tensor | None, softcap: float | None = None,
                    sinks_h: torch.Tensor | None = None) -> torch.Tensor:
    """`softmax(q·kᵀ·scale [softcapped] + bias, masked)` in float32: [h, R, S], rows sum to 1
    (to less than 1 when `sinks_h` takes its share)."""
    scores_hRS = torch.matmul(q_hRD.float(), k_hSD.float().transpose(-1, -2)) * scale
    if softcap:
        scores_hRS = torch.tanh(scores_hRS / softcap) * softcap
    if bias is not None:
        scores_hRS = scores_hRS + bias.float().clamp_min(_MIN)
    if allowed is not None:
        scores_hRS = scores_hRS.masked_fill(~allowed, _MIN)
    if sinks_h is None:
        return torch.softmax(scores_hRS, dim=-1)
    sink_hR1 = sinks_h.float().view(-1, 1, 1).expand(scores_hRS.shape[0], scores_hRS.shape[1], 1)
    return torch.softmax(torch.cat([scores_hRS, sink_hR1], dim=-1), dim=-1)[..., :-1]


def visible_counts(allowed: torch.Tensor | None, bias: torch.Tensor | None, h: int, R: int, S: int,
                   device: torch.device) -> torch.Tensor | None:
    """Number of visible keys per kept row: [h, R] float32; None when every row sees all S keys."""
    vis_hRS: torch.Tensor | None = allowed
    if bias is not None:
        real = bias > torch.finfo(bias.dtype).min / 2
        vis_hRS = real if vis_hRS is None else vis_hRS & real
    if vis_hRS is None:
        return None
    return vis_hRS.sum(-1, dtype=torch.float32).expand(h, R)


def head_stats(probs_hRS: torch.Tensor, visible_hR: torch.Tensor | None) -> torch.Tensor:
    """Per head [h, 4] float32 (columns `STAT_FIELDS`), over rows with at least one visible key:

    entropy: mean of -Σ p log p (nats); max_weight: mean of the row maximum; sink_weight: mean of
    the row maximum over rows with >= `SINK_MIN_VISIBLE` visible keys (0 when there is none);
    max_visible: the largest number of visible keys of any kept row. `visible_hR` None: every
    row sees all S keys.
    """
    ent_hR = -torch.special.xlogy(probs_hRS, probs_hRS).sum(-1)
    top_hR = probs_hRS.amax(-1)
    if visible_hR is None:                           # every key visible: plain means, a few ops
        S = probs_hRS.shape[-1]
        max_weight_h = top_hR.mean(-1)
        sink_h = max_weight_h if S >= SINK_MIN_VISIBLE else torch.zeros_like(max_weight_h)
        return torch.stack([ent_hR.mean(-1), max_weight_h, sink_h, torch.full_like(max_weight_h, float(S))], dim=-1)
    valid_hR = (visible_hR > 0).float()
    sink_rows_hR = (visible_hR >= SINK_MIN_VISIBLE).float()
    n_valid_h = valid_hR.sum(-1).clamp_min(1.0)
    entropy_h = (ent_hR * valid_hR).sum(-1) / n_valid_h
    max_weight_h = (top_hR * valid_hR).sum(-1) / n_valid_h
    sink_h = (top_hR * sink_rows_hR).sum(-1) / sink_rows_hR.sum(-1).clamp_min(1.0)
    return torch.stack([entropy_h, max_weight_h, sink_h, visible_hR.amax(-1)], dim=-1)


def heads_probs(q_HTD: torch.Tensor, k_GSD: torch.Tensor, scale: float, vis: Visibility, heads: list[int],
                stride: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(probabilities [h, R, S] float32 of `heads` for every `stride`-th query row, visible keys per
    row [h, R] or None when every row sees all keys); keys of grouped-query attention shared."""
    H, T, _ = q_HTD.shape
    G, S, _ = k_GSD.shape
    group = max(H // max(G, 1), 1)
    device = q_HTD.device
    sel = head_index(heads, device)
    allowed, bias = row_mask(vis, T, S, stride, sel, device)
    sinks = None if vis.sinks_H is None else vis.sinks_H.to(device)[sel]
    probs_hRS = attention_probs(q_HTD[sel][:, ::stride], k_GSD[head_index([h // group for h in heads], device)], scale,
                                allowed, bias, vis.softcap, sinks)
    return probs_hRS, visible_counts(allowed, bias, len(heads), probs_hRS.shape[1], S, device)


def layer_attention(q_HTD: torch.Tensor, k_GSD: torch.Tensor, scale: float, vis: Visibility,
                    heads: list[int], max_rows: int,
                    budget: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Probabilities of the sampled `heads` of one sequence and their statistics.

    `q_HTD`: queries of every head; `k_GSD`: keys with G = H / group key heads (grouped-query
    attention: query head i reads key head i // group). Rows are subsampled to at most
    `max_rows`; heads are processed in chunks of about `budget` scores to bound the temporary
    memory. Returns (probs [h, R, S] float16, stats [h, 4] float32, row_stride).
    """
    T, S = q_HTD.shape[1], k_GSD.shape[1]
    stride = row_stride(T, max_rows)
    R = len(range(0, T, stride))
    chunk = max(1, budget // max(R * S, 1))
    probs_parts: list[torch.Tensor] = []
    stats_parts: list[torch.Tensor] = []
    for lo in range(0, len(heads), chunk):
        part = heads[lo:lo + chunk]
        probs_hRS, visible_hR = heads_probs(q_HTD, k_GSD, scale, vis, part, stride)
        stats_parts.append(head_stats(probs_hRS, visible_hR))
        probs_parts.append(probs_hRS.to(torch.float16))
    probs = probs_parts[0] if len(probs_parts) == 1 else torch.cat(probs_parts)
    stats = stats_parts[0] if len(stats_parts) == 1 else torch.cat(stats_parts)
    return probs, stats, stride


_INDEX_CACHE: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}


def head_index(heads: list[int], device: torch.device) -> slice | torch.Tensor:
    """A slice for a run of consecutive heads, else an index tensor on `device`, made once per
    device and head list (a host-to-device copy of pageable memory waits for the device)."""
    if heads == list(range(heads[0], heads[-1] + 1)):
        return slice(heads[0], heads[-1] + 1)
    key = (str(device), tuple(heads))
    idx = _INDEX_CACHE.get(key)
    if idx is None:
        if len(_INDEX_CACHE) > 256:
            _INDEX_CACHE.clear()
        idx = _INDEX_CACHE[key] = torch.tensor(heads, device=device)
    return idx
