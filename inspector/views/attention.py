"""Attention maps and per-head statistics, ready to draw (heatmaps, grids, entropy over steps)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from inspector.schema import ATTENTION_MAP
from inspector.views.downsample import bin_columns
from inspector.views.live import LiveRun
from inspector.views.steps import nearest_at_or_before


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
    """Entropy, max weight and collapse flag per (layer, head) at the nearest recorded step ≤ `step`."""
    cols = ["layer", "head", "entropy", "max_weight", "collapsed"]
    df = _stats(run, rank)
    if df.empty:
        return pd.DataFrame(columns=cols)
    at = nearest_at_or_before(sorted(df["step"].unique().tolist()), step)
    return df[df["step"] == at][cols].sort_values(["layer", "head"]).reset_index(drop=True)


def entropy_matrix(run: LiveRun, *, rank: int = 0, max_steps: int = 500) -> tuple[list[str], list[int], np.ndarray]:
    """(row labels "L0·H1", steps, entropy [layer·head, steps]); above `max_steps` steps, consecutive
    steps are binned with their minimum, so a collapsing head's dip stays visible."""
    def compute() -> tuple[list[str], list[int], np.ndarray]:
        df = _stats(run, rank)
        if df.empty:
            return [], [], np.zeros((0, 0))
        wide = df.pivot_table(index=["layer", "head"], columns="step", values="entropy", aggfunc="last")
        steps, z = bin_columns(wide.columns.to_numpy(np.int64), wide.to_numpy(np.float64), max_steps, "min")
        labels = [f"L{layer}·H{head}" for layer, head in wide.index]
        return labels, [int(s) for s in steps], z

    return run.cached(("entropy_matrix", rank, max_steps), ("attention_stats",), compute)


def collapsed_heads(run: LiveRun, *, rank: int = 0) -> list[tuple[int, int, int]]:
    """(layer, head, first step) of every head ever flagged as collapsed (samples with a
    non-finite entropy left out: runs recorded before the probe stopped flagging those)."""
    df = _stats(run, rank)
    if df.empty:
        return []
    flagged = df[df["collapsed"] & np.isfinite(df["entropy"])].groupby(["layer", "head"])["step"].min()
    return [(int(layer), int(head), int(step)) for (layer, head), step in flagged.items()]
