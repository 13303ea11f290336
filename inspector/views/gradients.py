"""Gradient statistics ready to plot: layer × step heatmaps, update/weight ratio lines, one group in detail.

Heatmaps are bounded (at most `max_steps` columns, binned with the maximum so spikes stay visible);
line series are downsampled to `max_points` with their extremes kept. A step whose values are all
NaN (a non-finite step) keeps its column, marked in `Heatmap.nonfinite`; no NaN/Inf is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from inspector.views.downsample import (DEFAULT_POINTS, MAX_HEAT_STEPS, bin_codes, bin_columns,
                                        downsample_indices, downsample_series, natural_key,
                                        nonfinite_run_ends, wide_matrix)
from inspector.views.live import LiveRun

GRAD_STATS = ("norm", "mean", "var", "max_abs", "zero_frac", "update_ratio", "var_over_steps")
"""The per-group columns of `grad_stats`."""

MAX_HEAT_ROWS = 200


@dataclass
class Heatmap:
    """A matrix [rows, steps] with its row labels and step coordinates (NaN where nothing was recorded
    or the value is NaN); `nonfinite` holds `downsample.nonfinite_codes` of the recorded values
    (1 NaN, 2 +Inf, 3 −Inf), None when all are finite."""

    rows: list[str]
    steps: np.ndarray
    z: np.ndarray
    nonfinite: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        """True when there is nothing to draw."""
        return self.z.size == 0


def _rank_frame(run: LiveRun, rank: int) -> pd.DataFrame:
    df = run.frame("grad_stats")
    return df[df["rank"] == rank] if not df.empty else df


def grad_groups(run: LiveRun, *, rank: int = 0) -> list[str]:
    """Names of the parameter groups with gradient statistics, in natural (layer) order."""
    return run.cached(("grad_groups", rank), ("grad_stats",),
                      lambda: sorted(_rank_frame(run, rank)["name"].unique().tolist(), key=natural_key))


def grad_heatmap(run: LiveRun, stat: str = "norm", *, rank: int = 0, max_steps: int = MAX_HEAT_STEPS,
                 max_rows: int = MAX_HEAT_ROWS) -> Heatmap:
    """Statistic `stat` of every parameter group (rows, natural order) over the sampled steps (columns)."""
    if stat not in GRAD_STATS:
        raise ValueError(f"unknown gradient statistic {stat!r}; known: {', '.join(GRAD_STATS)}")

    def compute() -> Heatmap:
        df = _rank_frame(run, rank)
        if df.empty:
            return Heatmap([], np.empty(0, np.int64), np.empty((0, 0)))
        rows, steps, z, codes = wide_matrix(df, stat)
        if len(rows) > max_rows:
            keep = np.linspace(0, len(rows) - 1, max_rows).round().astype(int)
            z, codes = z[keep], codes[keep]
            rows = [rows[i] for i in keep]
        binned_steps, z = bin_columns(steps, z, max_steps, "max")
        codes = bin_codes(codes, max_steps)
        return Heatmap(rows, binned_steps, z, codes if codes.any() else None)

    return run.cached(("grad_heatmap", stat, rank, max_steps, max_rows), ("grad_stats",), compute)


def grad_lines(run: LiveRun, stat: str = "update_ratio", *, rank: int = 0, groups: list[str] | None = None,
               max_points: int = DEFAULT_POINTS) -> dict[str, pd.DataFrame]:
    """One `step`/`value` series of `stat` per group (all groups unless `groups`), each downsampled."""
    def compute() -> dict[str, pd.DataFrame]:
        df = _rank_frame(run, rank)
        out: dict[str, pd.DataFrame] = {}
        if df.empty:
            return out
        for name in groups or grad_groups(run, rank=rank):
            sel = df[df["name"] == name].drop_duplicates("step", keep="last").sort_values("step")
            out[name] = downsample_series(sel["step"].to_numpy(), sel[stat].to_numpy(np.float64), max_points)
        return out

    key = ("grad_lines", stat, rank, tuple(groups or ()), max_points)
    return run.cached(key, ("grad_stats",), compute)


def group_detail(run: LiveRun, name: str, *, rank: int = 0, max_points: int = DEFAULT_POINTS) -> pd.DataFrame:
    """Every statistic of one group over steps (columns `step` + `GRAD_STATS`), downsampled on the norm."""
    df = _rank_frame(run, rank)
    if df.empty:
        return pd.DataFrame(columns=["step", *GRAD_STATS])
    sel = df[df["name"] == name].drop_duplicates("step", keep="last").sort_values("step")
    idx = downsample_indices(sel["step"].to_numpy(), sel["norm"].to_numpy(np.float64), max_points)
    if len(idx) < len(sel):  # a NaN/Inf in any statistic keeps its step
        for col in GRAD_STATS:
            idx = np.union1d(idx, nonfinite_run_ends(sel[col].to_numpy(np.float64), max_points))
    return sel.iloc[idx][["step", *GRAD_STATS]].reset_index(drop=True)
