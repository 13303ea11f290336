"""MoE expert load: tokens per expert per layer, imbalance over time, balance bias."""
from __future__ import annotations

import numpy as np
import pandas as pd

from inspector.views.downsample import bin_columns
from inspector.views.live import LiveRun
from inspector.views.steps import nearest_at_or_before


def _rows(run: LiveRun, rank: int) -> pd.DataFrame:
    df = run.frame("expert_load")
    return df[df["rank"] == rank] if not df.empty else df


def expert_steps(run: LiveRun, rank: int = 0) -> list[int]:
    """Sorted steps at which `rank` recorded expert load."""
    return run.cached(("expert_steps", rank), ("expert_load",),
                      lambda: sorted(_rows(run, rank)["step"].unique().tolist()))


def _at(run: LiveRun, step: int, rank: int) -> pd.DataFrame:
    at = nearest_at_or_before(expert_steps(run, rank), step)
    if at is None:
        return pd.DataFrame()
    df = _rows(run, rank)
    return df[df["step"] == at].sort_values("layer")


def expert_counts(run: LiveRun, *, step: int, rank: int = 0) -> tuple[list[int], np.ndarray]:
    """(layers, tokens per expert [layers, experts]) at the nearest recorded step ≤ `step`."""
    rows = _at(run, step, rank)
    if rows.empty:
        return [], np.zeros((0, 0), dtype=np.int64)
    counts = [np.asarray(c, dtype=np.int64) for c in rows["counts"]]
    width = max(len(c) for c in counts)
    mat = np.zeros((len(counts), width), dtype=np.int64)
    for i, c in enumerate(counts):
        mat[i, :len(c)] = c
    return rows["layer"].astype(int).tolist(), mat


def imbalance_series(run: LiveRun, *, rank: int = 0) -> pd.DataFrame:
    """Per recorded step and layer: imbalance (max/mean), cv, router entropy, aux loss."""
    cols = ["step", "layer", "imbalance", "cv", "router_entropy", "aux_loss"]
    df = _rows(run, rank)
    if df.empty:
        return pd.DataFrame(columns=cols)
    return df[cols].sort_values(["layer", "step"]).reset_index(drop=True)


def expert_bias(run: LiveRun, *, step: int, rank: int = 0) -> tuple[list[int], np.ndarray | None]:
    """(layers, balance bias [layers, experts]) at the nearest step ≤ `step`; None if the router has none."""
    rows = _at(run, step, rank)
    if rows.empty or rows["bias"].isna().all():
        return (rows["layer"].astype(int).tolist() if not rows.empty else []), None
    biases = [np.asarray(b if b is not None else [], dtype=np.float64) for b in rows["bias"]]
    width = max(len(b) for b in biases)
    mat = np.full((len(biases), width), np.nan)
    for i, b in enumerate(biases):
        mat[i, :len(b)] = b
    return rows["layer"].astype(int).tolist(), mat


def expert_share_over_time(run: LiveRun, *, layer: int, rank: int = 0,
                           max_steps: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(steps, share of tokens [experts, steps]) of one MoE layer; at most `max_steps` columns (bins averaged).

    Added by the dashboard (experts page: "change over time").
    """
    def compute() -> tuple[np.ndarray, np.ndarray]:
        df = _rows(run, rank)
        if df.empty:
            return np.empty(0, np.int64), np.zeros((0, 0))
        sel = df[df["layer"] == layer].drop_duplicates("step", keep="last").sort_values("step")
        if sel.empty:
            return np.empty(0, np.int64), np.zeros((0, 0))
        counts = [np.asarray(c, dtype=np.float64) for c in sel["counts"]]
        width = max(len(c) for c in counts)
        mat = np.zeros((width, len(counts)))
        for i, c in enumerate(counts):
            mat[:len(c), i] = c
        totals = mat.sum(0)
        share = np.divide(mat, totals, out=np.zeros_like(mat), where=totals > 0)
        return bin_columns(sel["step"].to_numpy(np.int64), share, max_steps, "mean")

    return run.cached(("expert_share_over_time", layer, rank, max_steps), ("expert_load",), compute)
