"""Exact attention statistics over every query row of a long sequence, in tiles, never building T×S.

For each sampled head the scores `q·kᵀ·scale` (softcapped, biased, masked by `Visibility`) are
computed one tile of `tile_q` query rows × `tile_k` keys at a time, with an online softmax: each
row keeps its running maximum `m` and, scaled to it, its running sums (the real keys' mass `E`,
`Σ e·s` for the entropy, the mass on the sequence's first `SINK_TOKENS` keys, the mass per distance
bucket, and the mass per pooled key block); when a later tile raises the maximum, the sums are
multiplied by `exp(m_old − m_new)`. A query tile is finished after its last key tile, folded into
the per-head sums and into the pooled map, and dropped. Extra memory: O(heads · tile_q · (map
keys + buckets)) plus one score tile plus the pooled map, whatever T is. Key tiles that a causal
mask or a window hides entirely are skipped.

Per head, over the rows that see at least one key (as `head_stats` in `stats`):
entropy (nats, mean of −Σ p log p), max_weight (mean row maximum), sink_weight (mean row maximum
over rows with ≥ `SINK_MIN_VISIBLE` visible keys), max_visible (most visible keys of any row),
sink_mass (mean probability on the first `SINK_TOKENS` real keys), and the distance profile: mean
probability per bucket of query−key distance |i − j|: bucket 0 is the query's own position, bucket
b ≥ 1 holds distances [2^(b−1), 2^b), the last bucket everything from 2^(DISTANCE_BUCKETS−2) on.

The map is pooled (`pool_sizes`) onto a coarser grid that is still an attention map: each cell is
the weight a query puts on a block of `key_pool` keys (their sum), averaged over a block of
`row_pool` queries, so every row sums to 1 and the 0 … 1 colour scale means what it means on a full
map (1 = exact; a row that sees no key is uniform, as eager attention makes it, and is left out of
the statistics). Full rows for chosen query positions come from `stats.heads_probs` on those rows alone.
"""
from __future__ import annotations

from collections import OrderedDict

import math
from dataclasses import dataclass

import torch

from inspector.probes.attention.stats import SINK_MIN_VISIBLE, Visibility, _heads, head_index, head_stats, heads_probs

SINK_TOKENS = 4
"""Keys counted as the attention sink: the first real tokens of the sequence."""

DISTANCE_BUCKETS = 18
"""Buckets of the distance profile (see the module docstring): up to 2^16 apart, then one more."""

EXTRA_FIELDS = ("sink_mass",) + tuple(f"distance_{b}" for b in range(DISTANCE_BUCKETS))
"""Columns of `TiledAttention.extra`, in order."""


def distance_bucket_edges() -> list[int]:
    """Smallest distance of each bucket: [0, 1, 2, 4, …, 2^(B−2)]."""
    return [0] + [1 << (b - 1) for b in range(1, DISTANCE_BUCKETS)]


_EDGES: dict[str, torch.Tensor] = {}


def _edges_on(device: torch.device) -> torch.Tensor:
    """The bucket edges and an end sentinel, [B + 1] int64 on `device`, made once per device (a copy
    from pageable host memory would wait for the device at every capture)."""
    key = str(device)
    if key not in _EDGES:
        _EDGES[key] = torch.tensor(distance_bucket_edges() + [1 << 62], device=device)
    return _EDGES[key]


def _sink_keys(vis: Visibility) -> torch.Tensor | None:
    """Bool [S]: the sequence's first `SINK_TOKENS` real keys (after left padding), computed on the
    device; None without a key mask (then they are columns 0 … SINK_TOKENS − 1)."""
    if vis.key_mask_S is None:
        return None
    real_S = vis.key_mask_S.to(torch.bool)
    return real_S & (real_S.cumsum(0) <= SINK_TOKENS)


def _sink_mass(w_hRK: torch.Tensor, sink_S: torch.Tensor | None, c0: int, c1: int) -> torch.Tensor | None:
    """Weight [h, R] on the sink keys among columns c0 … c1 − 1 (None when none of them is one)."""
    if sink_S is None:
        return w_hRK[..., :SINK_TOKENS - c0].sum(-1) if c0 < SINK_TOKENS else None
    return (w_hRK * sink_S[c0:c1].to(device=w_hRK.device, dtype=w_hRK.dtype)).sum(-1)


@dataclass
class TiledAttention:
    """What `tiled_attention` returns for the sampled heads of one sequence."""

    stats: torch.Tensor        # [h, 4] float32, columns `stats.STAT_FIELDS`
    extra: torch.Tensor        # [h, 1 + DISTANCE_BUCKETS] float32, columns `EXTRA_FIELDS`
    pooled: torch.Tensor       # [h, ceil(T / row_pool), ceil(S / key_pool)] float16
    row_pool: int
    key_pool: int
    rows: torch.Tensor | None  # [h, len(positions), S] float16: full rows of the chosen positions
    positions: list[int]       # the chosen query positions (0-based rows of this sequence)


def pool_sizes(T: int, S: int, max_rows: int) -> tuple[int, int]:
    """(row_pool, key_pool) so that the map has at most `max_rows` rows and `max_rows²` cells, keys
    pooled only as much as that budget needs (a decode row keeps up to `max_rows²` keys exactly)."""
    if max_rows <= 0:
        return 1, 1
    row_pool = max(1, math.ceil(T / max_rows))
    rows = math.ceil(T / row_pool)
    keys_allowed = max(max_rows, (max_rows * max_rows) // max(rows, 1))
    key_pool = max(1, math.ceil(S / keys_allowed))
    return row_pool, key_pool


def summarise_attention(q_HTD: torch.Tensor, k_GSD: torch.Tensor, scale: float, vis: Visibility, heads: list[int],
                        max_rows: int, positions: list[int] | None = None, *,
                        tile_budget: int = 1 << 22) -> TiledAttention:
    """What the attention probe records of one sequence: exact over every row either way. A map small
    enough to need no pooling, whose scores fit one tile, is computed whole (fewer ops: a decode row,
    a short training sequence); anything larger goes through `tiled_attention`."""
    T, S = q_HTD.shape[1], k_GSD.shape[1]
    if pool_sizes(T, S, max_rows) == (1, 1) and len(heads) * T * S <= tile_budget:
        return _whole(q_HTD, k_GSD, scale, vis, heads)
    return tiled_attention(q_HTD, k_GSD, scale, vis, heads, max_rows, positions, tile_budget=tile_budget)


def _whole(q_HTD: torch.Tensor, k_GSD: torch.Tensor, scale: float, vis: Visibility, heads: list[int]) -> TiledAttention:
    """`summarise_attention` for a map kept whole: every row of it is already a full row."""
    probs_hTS, visible_hT = heads_probs(q_HTD, k_GSD, scale, vis, heads)
    stats = head_stats(probs_hTS, visible_hT)
    extra = probs_extras(probs_hTS, visible_hT, vis.q_offset, _sink_keys(vis))
    return TiledAttention(stats, extra, probs_hTS.to(torch.float16), 1, 1, None, [])


_BUCKETS: "OrderedDict[tuple[int, int, int, str], torch.Tensor]" = OrderedDict()
_BUCKETS_KEPT, _BUCKETS_MAX_CELLS = 8, 1 << 16


def _distance_buckets(q_offset: int, T: int, S: int, device: torch.device) -> torch.Tensor:
    """Distance bucket [T, S] int64 of each (query row, key) pair. Small ones (a decode row over its
    cache) are kept for the next capture: every layer of an iteration asks for the same one."""
    key = (q_offset, T, S, str(device))
    hit = _BUCKETS.get(key)
    if hit is not None:
        return hit
    dist_TS = ((torch.arange(q_offset, q_offset + T, device=device).view(-1, 1)
                - torch.arange(S, device=device).view(1, -1)).abs())
    bucket_TS = torch.bucketize(dist_TS, _edges_on(device)[:-1], right=True) - 1
    if T * S <= _BUCKETS_MAX_CELLS:
        _BUCKETS[key] = bucket_TS
        while len(_BUCKETS) > _BUCKETS_KEPT:
            _BUCKETS.popitem(last=False)
    return bucket_TS


def probs_extras(probs_hTS: torch.Tensor, visible_hT: torch.Tensor | None, q_offset: int,
                 sink_S: torch.Tensor | None) -> torch.Tensor:
    """Sink mass and distance profile [h, 1 + DISTANCE_BUCKETS] of whole probabilities, as the tiles
    compute them (means over rows that see a key)."""
    h, T, S = probs_hTS.shape
    bucket_TS = _distance_buckets(q_offset, T, S, probs_hTS.device)
    buckets_hTB = probs_hTS.new_zeros(h, T, DISTANCE_BUCKETS).scatter_add_(
        -1, bucket_TS.unsqueeze(0).expand(h, T, S), probs_hTS)
    sink_hT = _sink_mass(probs_hTS, sink_S, 0, S)
    per_row = torch.cat([sink_hT.unsqueeze(-1), buckets_hTB], dim=-1)
    if visible_hT is None:
        return per_row.mean(1)
    valid_hT1 = (visible_hT > 0).float().unsqueeze(-1)
    return (per_row * valid_hT1).sum(1) / valid_hT1.sum(1).clamp_min(1.0)


def tiled_attention(q_HTD: torch.Tensor, k_GSD: torch.Tensor, scale: float, vis: Visibility, heads: list[int],
                    max_rows: int, positions: list[int] | None = None, *, tile_q: int = 256,
                    tile_budget: int = 1 << 22) -> TiledAttention:
    """Statistics, pooled map and chosen full rows of the sampled `heads`; see the module docstring.

    `q_HTD`: queries of every head; `k_GSD`: keys (G = H / group under grouped-query attention).
    `positions`: query rows wanted in full (negative counts from the end; out of range dropped).
    """
    H, T, D = q_HTD.shape
    G, S, _ = k_GSD.shape
    group = max(H // max(G, 1), 1)
    device = q_HTD.device
    row_pool, key_pool = pool_sizes(T, S, max_rows)
    h = len(heads)
    sel = head_index(heads, device)                 # a slice for consecutive heads: masks are never copied whole
    kv_idx = head_index([x // group for x in heads], device)
    tile_q = max(1, min(tile_q, T))
    tile_k = max(key_pool, (tile_budget // max(h * tile_q, 1)) // key_pool * key_pool)
    map_rows, map_keys = math.ceil(T / row_pool), math.ceil(S / key_pool)
    pooled = torch.zeros(h, map_rows, map_keys, dtype=torch.float32, device=device)
    wide = torch.float32 if device.type == "mps" else torch.float64
    totals = torch.zeros(h, 6 + DISTANCE_BUCKETS, dtype=wide, device=device)
    # totals columns: entropy sum, max-weight sum, valid rows, sink-row max sum, sink rows, sink mass, buckets…
    max_visible = torch.zeros(h, dtype=torch.float32, device=device)
    sink_S = _sink_keys(vis)
    edges = _edges_on(device)
    sinks = None if vis.sinks_H is None else vis.sinks_H.to(device)[sel].float().view(h, 1)
    key_counts = _block_counts(S, key_pool, device)
    # a row that sees no key: uniform, as eager attention (and Hugging Face) give it; all on the sink if any
    blind_P = key_counts / S if sinks is None else torch.zeros_like(key_counts)
    for q0 in range(0, T, tile_q):
        q1 = min(q0 + tile_q, T)
        acc = _QueryTile(h, q1 - q0, map_keys, device, sinks)
        q_hRD = q_HTD[sel, q0:q1].float()
        pos_R = torch.arange(vis.q_offset + q0, vis.q_offset + q1, device=device)
        for c0 in _key_tiles(vis, q0, q1, S, tile_k):
            c1 = min(c0 + tile_k, S)
            k_hKD = k_GSD[kv_idx, c0:c1].float()
            s_hRK = torch.matmul(q_hRD, k_hKD.transpose(-1, -2)) * scale
            if vis.softcap:
                s_hRK = torch.tanh(s_hRK / vis.softcap) * vis.softcap
            seen_hRK = _tile_visibility(vis, sel, pos_R, q0, q1, c0, c1, h, device)
            if vis.bias_HTS is not None:
                bias = _heads(vis.bias_HTS, sel)[:, q0:q1, c0:c1].to(device).float()
                s_hRK = s_hRK + bias.clamp_min(torch.finfo(torch.float32).min)
            acc.add(s_hRK, seen_hRK, c0, c1, pos_R, key_pool, sink_S, edges)
        acc.finish(totals, max_visible, pooled, q0, row_pool, blind_P)
    valid = totals[:, 2].clamp_min(1.0)
    stats = torch.stack([totals[:, 0] / valid, totals[:, 1] / valid, totals[:, 3] / totals[:, 4].clamp_min(1.0),
                         max_visible.to(wide)], dim=-1).float()
    extra = (totals[:, 5:] / valid.unsqueeze(1)).float()
    pooled /= _block_counts(T, row_pool, device).view(1, -1, 1)
    chosen = sorted({p + T if p < 0 else p for p in (positions or []) if -T <= p < T})
    rows = _full_rows(q_HTD, k_GSD, scale, vis, heads, chosen) if chosen else None
    return TiledAttention(stats, extra, pooled.to(torch.float16), row_pool, key_pool, rows, chosen)


class _QueryTile:
    """Running sums of one query tile's rows over the key tiles seen so far (online softmax)."""

    def __init__(self, h: int, R: int, map_keys: int, device: torch.device, sinks: torch.Tensor | None) -> None:
        z = torch.zeros(h, R, dtype=torch.float32, device=device)
        self.m = torch.full((h, R), -math.inf, device=device)   # running max of every logit (sink included)
        self.real_max = torch.full((h, R), -math.inf, device=device)
        self.mass, self.es, self.sink, self.visible = z.clone(), z.clone(), z.clone(), z.clone()
        self.buckets = torch.zeros(h, R, DISTANCE_BUCKETS, dtype=torch.float32, device=device)
        self.keys = torch.zeros(h, R, map_keys, dtype=torch.float32, device=device)
        self.sink_logit = None
        if sinks is not None:                     # a virtual key: in the normaliser only
            self.sink_logit = sinks.expand(h, R)
            self.m = self.sink_logit.clone()

    def add(self, s_hRK: torch.Tensor, seen_hRK: torch.Tensor | None, c0: int, c1: int, pos_R: torch.Tensor,
            key_pool: int, sink_S: torch.Tensor | None, edges: torch.Tensor) -> None:
        """Fold one key tile's scores (`seen_hRK`: which are visible; None = all) into the sums."""
        h, R, K = s_hRK.shape
        if seen_hRK is None:
            tile_max = s_hRK.amax(-1)
            self.visible += K
        else:
            tile_max = s_hRK.masked_fill(~seen_hRK, -math.inf).amax(-1)
            self.visible += seen_hRK.sum(-1)
        self.real_max = torch.maximum(self.real_max, tile_max)
        m_new = torch.maximum(self.m, tile_max)
        base = _finite(m_new)
        factor = torch.exp(self.m - base)
        for t in (self.mass, self.es, self.sink):
            t.mul_(factor)
        self.buckets.mul_(factor.unsqueeze(-1))
        self.keys.mul_(factor.unsqueeze(-1))
        self.m = m_new
        e_hRK = torch.exp(s_hRK - base.unsqueeze(-1))
        if seen_hRK is not None:
            e_hRK = e_hRK.masked_fill(~seen_hRK, 0.0)
            s_hRK = s_hRK.masked_fill(~seen_hRK, 0.0)
        self.mass += e_hRK.sum(-1)
        self.es += (e_hRK * s_hRK).sum(-1)
        on_sink = _sink_mass(e_hRK, sink_S, c0, c1)
        if on_sink is not None:
            self.sink += on_sink
        self._add_distances(e_hRK, c0, c1, pos_R, edges)
        first = c0 // key_pool
        blocks = e_hRK.new_zeros(h, R, math.ceil(K / key_pool) * key_pool)
        blocks[..., :K] = e_hRK
        self.keys[..., first:first + blocks.shape[-1] // key_pool] += blocks.view(h, R, -1, key_pool).sum(-1)

    def _add_distances(self, e_hRK: torch.Tensor, c0: int, c1: int, pos_R: torch.Tensor, edges: torch.Tensor) -> None:
        """Mass per distance bucket, from prefix sums along the tile's keys read at bucket edges."""
        h, R, K = e_hRK.shape
        prefix = torch.zeros(h, R, K + 1, dtype=torch.float32, device=e_hRK.device)
        torch.cumsum(e_hRK, dim=-1, out=prefix[..., 1:])
        pos_R1 = pos_R.view(R, 1)
        # keys at or before the query: bucket b holds columns (pos − edge[b+1], pos − edge[b]]
        past_hi = (pos_R1 - edges[:-1] + 1).clamp(c0, c1) - c0
        past_lo = (pos_R1 - edges[1:] + 1).clamp(c0, c1) - c0
        # keys after the query (no causal mask): columns [pos + edge[b], pos + edge[b+1]), bucket 0 empty
        fut_lo = (pos_R1 + edges[:-1].clamp_min(1)).clamp(c0, c1) - c0
        fut_hi = (pos_R1 + edges[1:]).clamp(c0, c1) - c0
        fut_hi[:, 0] = fut_lo[:, 0]

        def take(idx_RB: torch.Tensor) -> torch.Tensor:
            return prefix.gather(-1, idx_RB.unsqueeze(0).expand(h, R, -1))

        self.buckets += (take(past_hi) - take(past_lo)) + (take(fut_hi) - take(fut_lo))

    def finish(self, totals: torch.Tensor, max_visible: torch.Tensor, pooled: torch.Tensor, q0: int,
               row_pool: int, blind_P: torch.Tensor) -> None:
        """Normalise the rows, add them to the per-head sums and the pooled map (`blind_P`: the pooled
        row of a query that sees no key)."""
        h, R = self.mass.shape
        base = _finite(self.m)
        norm = self.mass if self.sink_logit is None else self.mass + torch.exp(self.sink_logit - base)
        valid = self.visible > 0
        safe = torch.where(valid, norm, torch.ones_like(norm))
        # −Σ p log p with p = e / L, log p = s − m − log L (e, s over real keys only)
        entropy = (self.mass / safe) * (base + torch.log(safe)) - self.es / safe
        top = torch.exp(torch.where(valid, self.real_max, base) - base) / safe
        sink_rows = self.visible >= SINK_MIN_VISIBLE
        wide = totals.dtype
        vf, sf = valid.to(wide), sink_rows.to(wide)
        totals[:, 0] += (entropy.to(wide) * vf).sum(-1)
        totals[:, 1] += (top.to(wide) * vf).sum(-1)
        totals[:, 2] += vf.sum(-1)
        totals[:, 3] += (top.to(wide) * sf).sum(-1)
        totals[:, 4] += sf.sum(-1)
        totals[:, 5] += ((self.sink / safe).to(wide) * vf).sum(-1)
        totals[:, 6:] += ((self.buckets / safe.unsqueeze(-1)).to(wide) * vf.unsqueeze(-1)).sum(1)
        torch.maximum(max_visible, self.visible.amax(-1), out=max_visible)
        probs_hRP = torch.where(valid.unsqueeze(-1), self.keys / safe.unsqueeze(-1), blind_P)
        block = torch.arange(q0, q0 + R, device=probs_hRP.device) // row_pool
        pooled.index_add_(1, block, probs_hRP)


def _finite(m: torch.Tensor) -> torch.Tensor:
    """A running maximum with -inf (nothing seen yet) as 0: the base the sums are scaled to."""
    return torch.where(torch.isinf(m), torch.zeros_like(m), m)


def _key_tiles(vis: Visibility, q0: int, q1: int, S: int, tile_k: int) -> range | list[int]:
    """Start columns of the key tiles a query tile must read (tiles a causal mask or window hides are left out)."""
    hi = S
    lo = 0
    if vis.causal:
        hi = min(S, vis.q_offset + q1)                      # last row's position + 1
    if vis.window is not None:
        lo = max(0, vis.q_offset + q0 - vis.window + 1)     # first row's oldest visible key
    if hi <= lo:
        return [0]                                          # nothing visible: one tile keeps the rows well-defined
    return range(lo // tile_k * tile_k, hi, tile_k)


def _tile_visibility(vis: Visibility, sel: slice | torch.Tensor, pos_R: torch.Tensor, q0: int, q1: int, c0: int,
                     c1: int, h: int, device: torch.device) -> torch.Tensor | None:
    """Visible [h|1, R, K] bool of one tile; None when everything in it is visible (decided on the
    host, from positions: no wait for the device)."""
    cols_K = torch.arange(c0, c1, device=device)
    first, last = vis.q_offset + q0, vis.q_offset + q1 - 1
    seen: torch.Tensor | None = None
    if vis.causal and first < c1 - 1:
        seen = (cols_K.view(1, -1) <= pos_R.view(-1, 1)).unsqueeze(0)
    if vis.window is not None and last - c0 >= vis.window:
        inside = ((pos_R.view(-1, 1) - cols_K.view(1, -1)) < vis.window).unsqueeze(0)
        seen = inside if seen is None else seen & inside
    if vis.key_mask_S is not None:
        km = vis.key_mask_S[c0:c1].to(device=device, dtype=torch.bool).view(1, 1, -1)
        seen = km if seen is None else seen & km
    if vis.allowed_HTS is not None:
        given = _heads(vis.allowed_HTS, _on(sel, vis.allowed_HTS.device))[:, q0:q1, c0:c1]
        given = given.to(device=device, dtype=torch.bool)
        seen = given if seen is None else seen & given
    if vis.bias_HTS is not None:
        bias = _heads(vis.bias_HTS, _on(sel, vis.bias_HTS.device))[:, q0:q1, c0:c1].to(device)
        real = bias > torch.finfo(bias.dtype).min / 2
        seen = real if seen is None else seen & real
    if seen is not None and seen.shape[0] == 1 and h > 1:
        seen = seen.expand(h, -1, -1)
    return seen


def _on(sel: slice | torch.Tensor, device: torch.device) -> slice | torch.Tensor:
    """A head selection usable on `device`."""
    return sel if isinstance(sel, slice) else sel.to(device)


def _block_counts(n: int, pool: int, device: torch.device) -> torch.Tensor:
    """How many of `n` positions each block of `pool` holds (the last block may hold fewer)."""
    counts = torch.full((math.ceil(n / pool),), float(pool), device=device)
    counts[-1] = n - pool * (counts.shape[0] - 1)
    return counts


def _full_rows(q_HTD: torch.Tensor, k_GSD: torch.Tensor, scale: float, vis: Visibility, heads: list[int],
               positions: list[int]) -> torch.Tensor:
    """Probabilities [h, len(positions), S] (fp16) of the chosen query rows, computed on those rows alone."""
    out = []
    for t in positions:
        one = Visibility(causal=vis.causal, q_offset=vis.q_offset + t, window=vis.window, key_mask_S=vis.key_mask_S,
                         allowed_HTS=None if vis.allowed_HTS is None else vis.allowed_HTS[:, t:t + 1],
                         bias_HTS=None if vis.bias_HTS is None else vis.bias_HTS[:, t:t + 1],
                         softcap=vis.softcap, sinks_H=vis.sinks_H)
        out.append(heads_probs(q_HTD[:, t:t + 1], k_GSD, scale, one, heads)[0])
    return torch.cat(out, dim=1).to(torch.float16)
