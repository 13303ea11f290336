"""Attention maps and per-head statistics, ready to draw (heatmaps, grids, entropy over steps)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from inspector.schema import ATTENTION_MAP, ATTENTION_ROWS
from inspector.views.downsample import bin_codes, bin_columns, wide_matrix
from inspector.views.live import LiveRun
from inspector.views.scales import Scale, entropy_scale
from inspector.views.steps import nearest_at_or_before

MAX_KEY_SCAN = 64
"""Most map steps whose index rows `key_count_range` reads (spread evenly, the last one included)."""


@dataclass
class AttentionMatrix:
    """One head's attention probabilities with the labels to draw them."""

    probs: np.ndarray              # float32 [rows, keys]
    row_ids: np.ndarray            # first query position of each row (row_stride / row_pool applied)
    tokens: list[str] | None       # one label per key position, when recorded
    heads: list[int]               # the heads stored in this layer's map
    step: int
    layer: int
    head: int
    row_pool: int = 1              # query rows averaged into one map row (1: exact)
    key_pool: int = 1              # keys averaged into one map column (1: exact)
    query_len: int | None = None   # query rows and keys of the attention the map shows
    key_len: int | None = None

    @property
    def key_ids(self) -> np.ndarray:
        """First key position of each column."""
        return np.arange(self.probs.shape[1]) * self.key_pool

    @property
    def pooling(self) -> str | None:
        """How the map was shrunk, said in words (None: every query and key is its own cell)."""
        if self.row_pool == 1 and self.key_pool == 1:
            return None
        size = f" ({self.query_len:,} × {self.key_len:,} pooled)" if self.query_len and self.key_len else ""
        return f"each cell is the weight on {self.key_pool} keys, mean of {self.row_pool} queries{size}"


def attention_steps(run: LiveRun, rank: int = 0) -> list[int]:
    """Sorted steps at which `rank` stored attention maps."""
    return run.attention_steps(rank)


def _rows_at(run: LiveRun, step: int, rank: int) -> list[dict]:
    if rank not in run.ranks():
        return []
    return run.reader.blob_rows(ATTENTION_MAP.name, step=step, rank=rank)


def _map_keys(run: LiveRun, step: int, rank: int) -> dict[int, int]:
    """Key count per layer of the maps stored at `step`, from the index rows' shapes (no tensor read)."""
    keys: dict[int, int] = {}
    for row in _rows_at(run, step, rank):
        shape = row.get("shape")
        if isinstance(shape, list) and len(shape) == 3:
            layer = int(row["layer"])
            keys[layer] = max(keys.get(layer, 0), int(shape[2]))
    return keys


def key_count_range(run: LiveRun, *, rank: int = 0) -> tuple[int, int] | None:
    """(fewest, most) keys of any stored attention map: the entropy of a row over k keys is at most ln k.

    Reads the index rows of at most `MAX_KEY_SCAN` map steps; a count the probe recorded with the
    statistics (a `keys` column) is used when there is one. None when nothing tells the count.
    """
    stats = _stats(run, rank)
    if "keys" in stats.columns and stats["keys"].notna().any():
        return int(stats["keys"].min()), int(stats["keys"].max())
    steps = attention_steps(run, rank)
    if not steps:
        return None

    def compute() -> tuple[int, int] | None:
        picks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), MAX_KEY_SCAN)).round().astype(int))
        counts = [k for i in picks for k in _map_keys(run, steps[i], rank).values()]
        return (min(counts), max(counts)) if counts else None

    return run.cached(("attention_keys", rank, len(steps)), (), compute)


def attention_layers(run: LiveRun, *, step: int, rank: int = 0) -> list[int]:
    """Layers with a map at the nearest recorded step ≤ `step`."""
    at = nearest_at_or_before(attention_steps(run, rank), step)
    return [] if at is None else sorted({int(r["layer"]) for r in _rows_at(run, at, rank)})


def _layer_map(run: LiveRun, step: int, layer: int, rank: int) -> tuple[np.ndarray, dict]:
    return run.cached(("attention_map", rank, step, layer), (), lambda: run.reader.fetch(
        ATTENTION_MAP.name, step=step, rank=rank, layer=layer))


def attention_matrix(run: LiveRun, *, step: int, layer: int, head: int, rank: int = 0) -> AttentionMatrix | None:
    """The map of (`layer`, `head`) at the nearest recorded step ≤ `step`; None when there is none.

    `head` is a model head index; when only some heads were recorded, it must be one of them.
    """
    at = nearest_at_or_before(attention_steps(run, rank), step)
    if at is None or layer not in attention_layers(run, step=at, rank=rank):
        return None
    probs, row = _layer_map(run, at, layer, rank)
    heads = list(row["heads"]) if row.get("heads") else list(range(probs.shape[0]))
    if head not in heads:
        return None
    stride = max(int(row.get("row_stride") or 1), int(row.get("row_pool") or 1))
    rows = probs.shape[1]
    return AttentionMatrix(probs=probs[heads.index(head)].astype(np.float32),
                           row_ids=np.arange(rows) * stride, tokens=list(row["tokens"]) if row.get("tokens") else None,
                           heads=heads, step=at, layer=layer, head=head, row_pool=int(row.get("row_pool") or 1),
                           key_pool=int(row.get("key_pool") or 1), query_len=row.get("query_len"),
                           key_len=row.get("key_len"))


@dataclass
class AttentionRows:
    """Full attention rows of chosen query positions of one head (recorded beside a pooled map)."""

    positions: list[int]
    probs: np.ndarray              # float32 [positions, keys]
    step: int
    layer: int
    head: int


def attention_rows(run: LiveRun, *, step: int, layer: int, head: int, rank: int = 0) -> AttentionRows | None:
    """The full rows of (`layer`, `head`) stored at exactly `step` (they go with that step's map); None without."""
    if rank not in run.ranks():
        return None
    for row in run.reader.blob_rows(ATTENTION_ROWS.name, step=step, rank=rank):
        if int(row["layer"]) != layer:
            continue
        heads = list(row["heads"] or [])
        if head not in heads:
            return None
        probs, meta = run.cached(("attention_rows", rank, step, layer), (), lambda: run.reader.fetch(
            ATTENTION_ROWS.name, step=step, rank=rank, layer=layer))
        return AttentionRows(positions=list(meta["positions"]), probs=probs[heads.index(head)].astype(np.float32),
                             step=step, layer=layer, head=head)
    return None


def pool_map(mat: np.ndarray, size: int) -> np.ndarray:
    """An attention map [queries, keys] shrunk to at most size×size as the probe pools long maps:
    queries averaged over blocks, keys summed, so each row still sums to what it summed to (1) and
    a thumbnail reads on the same 0 … 1 scale as the full map."""
    out = mat
    for axis in (0, 1):
        n = out.shape[axis]
        if n > size:
            edges = np.linspace(0, n, size + 1).astype(int)
            out = np.add.reduceat(out, edges[:-1], axis=axis)
            if axis == 0:
                out = out / np.diff(edges).reshape(-1, 1)
    return out


def attention_grid(run: LiveRun, *, step: int, rank: int = 0, size: int = 24) -> dict[tuple[int, int], np.ndarray]:
    """Small (≤ size×size, `pool_map`) maps of every recorded (layer, head) at `step`."""
    at = nearest_at_or_before(attention_steps(run, rank), step)
    if at is None:
        return {}

    def compute() -> dict[tuple[int, int], np.ndarray]:
        grid = {}
        for layer in attention_layers(run, step=at, rank=rank):
            probs, row = _layer_map(run, at, layer, rank)
            heads = list(row["heads"]) if row.get("heads") else list(range(probs.shape[0]))
            for i, head in enumerate(heads):
                grid[(layer, head)] = pool_map(probs[i].astype(np.float32), size)
        return grid

    return run.cached(("attention_grid", rank, at, size), (), compute)


def _stats(run: LiveRun, rank: int) -> pd.DataFrame:
    df = run.frame("attention_stats")
    return df[df["rank"] == rank] if not df.empty else df


def head_stats(run: LiveRun, *, step: int, rank: int = 0) -> pd.DataFrame:
    """Entropy, max weight, collapse flag and key count (`keys`, NaN when unknown) per (layer, head)
    at the nearest recorded step ≤ `step`."""
    cols = ["layer", "head", "entropy", "max_weight", "collapsed"]
    df = _stats(run, rank)
    if df.empty:
        return pd.DataFrame(columns=cols + ["keys"])
    at = nearest_at_or_before(sorted(df["step"].unique().tolist()), step)
    sel = df[df["step"] == at]
    out = sel[cols].copy()
    recorded = sel["keys"].astype(np.float64) if "keys" in sel.columns else pd.Series(np.nan, index=sel.index)
    if recorded.isna().any():                 # older records: the key count of the stored map
        keys = _map_keys(run, at, rank)
        recorded = recorded.fillna(pd.Series([float(keys.get(int(layer), np.nan)) for layer in sel["layer"]],
                                             index=sel.index))
    out["keys"] = recorded
    return out.sort_values(["layer", "head"]).reset_index(drop=True)


def head_entropy_scale(stats: pd.DataFrame) -> Scale:
    """The entropy colour scale of a `head_stats` frame: 0 … ln(largest key count)."""
    keys = stats["keys"].to_numpy(np.float64) if "keys" in stats.columns else np.empty(0)
    keys = keys[np.isfinite(keys)]
    return entropy_scale(stats["entropy"].to_numpy(np.float64) if len(stats) else np.empty(0),
                         int(keys.max()) if keys.size else None, min_keys=int(keys.min()) if keys.size else None)


def entropy_matrix_scale(run: LiveRun, z: np.ndarray, *, rank: int = 0) -> Scale:
    """The entropy colour scale of an `entropy_matrix`: 0 … ln(largest key count of the run's maps)."""
    keys = key_count_range(run, rank=rank)
    return entropy_scale(z, keys[1] if keys else None, min_keys=keys[0] if keys else None)


def _entropy_wide(run: LiveRun, rank: int, max_steps: int) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
    def compute() -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
        df = _stats(run, rank)
        if df.empty:
            return [], [], np.zeros((0, 0)), np.zeros((0, 0), dtype=np.int8)
        named = df.assign(name=[f"L{layer}·H{head}" for layer, head in zip(df["layer"], df["head"])])
        labels, steps, z, codes = wide_matrix(named, "entropy")
        binned, z = bin_columns(steps, z, max_steps, "min")
        return labels, [int(s) for s in binned], z, bin_codes(codes, max_steps)

    return run.cached(("entropy_matrix", rank, max_steps), ("attention_stats",), compute)


def entropy_matrix(run: LiveRun, *, rank: int = 0, max_steps: int = 500) -> tuple[list[str], list[int], np.ndarray]:
    """(row labels "L0·H1", steps, entropy [layer·head, steps]); above `max_steps` steps, consecutive
    steps are binned with their minimum, so a collapsing head's dip stays visible. A step whose
    entropies are all NaN (a non-finite map) keeps its column."""
    labels, steps, z, _ = _entropy_wide(run, rank, max_steps)
    return labels, steps, z


def entropy_nonfinite(run: LiveRun, *, rank: int = 0, max_steps: int = 500) -> np.ndarray:
    """`downsample.nonfinite_codes` [layer·head, steps] of the recorded entropies, aligned with
    `entropy_matrix` (a bin holding any non-finite entropy is marked)."""
    return _entropy_wide(run, rank, max_steps)[3]


def collapsed_heads(run: LiveRun, *, rank: int = 0) -> list[tuple[int, int, int]]:
    """(layer, head, first step) of every head ever flagged as collapsed (samples with a
    non-finite entropy left out: runs recorded before the probe stopped flagging those)."""
    df = _stats(run, rank)
    if df.empty:
        return []
    flagged = df[df["collapsed"] & np.isfinite(df["entropy"])].groupby(["layer", "head"])["step"].min()
    return [(int(layer), int(head), int(step)) for (layer, head), step in flagged.items()]


def distance_labels(n: int) -> list[str]:
    """Labels of the distance buckets of `attention_stats.distance`: "0", "1", "2–3", "4–7", …, "≥ 2^k"."""
    out = ["0"]
    for b in range(1, n):
        lo = 1 << (b - 1)
        out.append(f"≥{lo:,}" if b == n - 1 else (str(lo) if lo == (1 << b) - 1 else f"{lo:,}–{(1 << b) - 1:,}"))
    return out


@dataclass
class DistanceProfile:
    """Where each head looks, at one recorded step: mean weight per query−key distance bucket."""

    labels: list[str]              # "L0·H1" per row
    buckets: list[str]             # distance bucket labels
    weights: np.ndarray            # float [heads, buckets]; each row sums to ~1
    sink_mass: np.ndarray          # float [heads]: mean weight on the first 4 real keys
    step: int


def distance_profile(run: LiveRun, *, step: int, rank: int = 0) -> DistanceProfile | None:
    """The distance profile of every recorded head at the nearest step ≤ `step` (None for runs
    recorded before the probe kept one)."""
    df = _stats(run, rank)
    if df.empty or "distance" not in df.columns:
        return None
    df = df[df["distance"].notna()]
    if df.empty:
        return None
    at = nearest_at_or_before(sorted(df["step"].unique().tolist()), step)
    if at is None:
        return None
    sel = df[df["step"] == at].sort_values(["layer", "head"])
    weights = np.stack([np.asarray(d, dtype=np.float64) for d in sel["distance"]])
    longest = float(np.nanmax(sel["keys"])) if "keys" in sel and sel["keys"].notna().any() else math.inf
    edges = [0] + [1 << (b - 1) for b in range(1, weights.shape[1])]
    reach = max(2, sum(1 for e in edges if e < longest))       # buckets no key of this run can fall in go
    labels = distance_labels(weights.shape[1])[:reach]
    weights = weights[:, :reach]
    return DistanceProfile(labels=[f"L{layer}·H{head}" for layer, head in zip(sel["layer"], sel["head"])],
                           buckets=labels, weights=weights,
                           sink_mass=sel["sink_mass"].to_numpy(np.float64), step=int(at))
