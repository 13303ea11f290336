"""Attention maps and per-head statistics, ready to draw (heatmaps, grids, entropy over steps)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from inspector.schema import ATTENTION_MAP
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
    row_ids: np.ndarray            # query position of each row (row_stride applied)
    tokens: list[str] | None       # one label per key position, when recorded
    heads: list[int]               # the heads stored in this layer's map
    step: int
    layer: int
    head: int


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
    stride = int(row.get("row_stride") or 1)
    rows = probs.shape[1]
    return AttentionMatrix(probs=probs[heads.index(head)].astype(np.float32),
                           row_ids=np.arange(rows) * stride, tokens=list(row["tokens"]) if row.get("tokens") else None,
                           heads=heads, step=at, layer=layer, head=head)


def block_average(mat: np.ndarray, size: int) -> np.ndarray:
    """`mat` shrunk to at most size×size by averaging blocks (rows and columns independently)."""
    out = mat
    for axis in (0, 1):
        n = out.shape[axis]
        if n > size:
            edges = np.linspace(0, n, size + 1).astype(int)
            out = np.add.reduceat(out, edges[:-1], axis=axis) / np.diff(edges).reshape(
                (-1, 1) if axis == 0 else (1, -1))
    return out


def attention_grid(run: LiveRun, *, step: int, rank: int = 0, size: int = 24) -> dict[tuple[int, int], np.ndarray]:
    """Small (≤ size×size, block-averaged) maps of every recorded (layer, head) at `step`."""
    at = nearest_at_or_before(attention_steps(run, rank), step)
    if at is None:
        return {}

    def compute() -> dict[tuple[int, int], np.ndarray]:
        grid = {}
        for layer in attention_layers(run, step=at, rank=rank):
            probs, row = _layer_map(run, at, layer, rank)
            heads = list(row["heads"]) if row.get("heads") else list(range(probs.shape[0]))
            for i, head in enumerate(heads):
                grid[(layer, head)] = block_average(probs[i].astype(np.float32), size)
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
    if "keys" in sel.columns:
        out["keys"] = sel["keys"].astype(np.float64)
    else:
        keys = _map_keys(run, at, rank)
        out["keys"] = [float(keys.get(int(layer), np.nan)) for layer in out["layer"]]
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
