"""Activation histograms over time (bins × step) and dead-unit fractions, per module."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from inspector.views.downsample import DEFAULT_POINTS, MAX_HEAT_STEPS, bin_columns, downsample_series, natural_key
from inspector.views.live import LiveRun

PREFIX = "activations/"
"""Histogram names the activations probe writes: "activations/<module>"."""


@dataclass
class HistogramOverTime:
    """Fractions of a module's outputs per bin (rows, bottom = lowest values) and step (columns)."""

    module: str
    steps: np.ndarray
    edges: np.ndarray
    z: np.ndarray
    outside: np.ndarray

    @property
    def centers(self) -> np.ndarray:
        """Bin centres (the heatmap's y coordinates)."""
        return (self.edges[:-1] + self.edges[1:]) / 2

    @property
    def empty(self) -> bool:
        """True when the module has no histogram."""
        return self.z.size == 0


def activation_modules(run: LiveRun, *, rank: int = 0) -> list[str]:
    """Modules with an activation histogram, in natural (layer) order."""
    def compute() -> list[str]:
        df = run.frame("histogram")
        if df.empty:
            return []
        names = df.loc[df["rank"] == rank, "name"].unique().tolist()
        return sorted((n[len(PREFIX):] for n in names if n.startswith(PREFIX)), key=natural_key)

    return run.cached(("activation_modules", rank), ("histogram",), compute)


def _rebin(counts: np.ndarray, lo: float, hi: float, edges: np.ndarray) -> np.ndarray:
    """Counts over equal bins of [lo, hi) moved onto `edges` (linear within each source bin)."""
    src = np.linspace(lo, hi, len(counts) + 1)
    cum = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])
    return np.diff(np.interp(edges, src, cum))


def histogram_over_time(run: LiveRun, module: str, *, rank: int = 0,
                        max_steps: int = MAX_HEAT_STEPS) -> HistogramOverTime:
    """The histograms of `module` as fractions [bins, steps]; ranges that change are re-binned onto the last one."""
    def compute() -> HistogramOverTime:
        df = run.frame("histogram")
        sel = df[(df["rank"] == rank) & (df["name"] == PREFIX + module)] if not df.empty else df
        if sel.empty:
            return HistogramOverTime(module, np.empty(0, np.int64), np.empty(0), np.empty((0, 0)), np.empty(0))
        sel = sel.drop_duplicates("step", keep="last").sort_values("step")
        counts = [np.asarray(c, dtype=np.float64) for c in sel["counts"]]
        lo, hi = sel["lo"].to_numpy(np.float64), sel["hi"].to_numpy(np.float64)
        bins = len(counts[-1])
        edges = np.linspace(lo[-1], hi[-1], bins + 1)
        cols = []
        for c, a, b in zip(counts, lo, hi):
            cols.append(c if (len(c) == bins and a == lo[-1] and b == hi[-1]) else _rebin(c, a, b, edges))
        z = np.stack(cols, axis=1)
        outside = (sel["underflow"].to_numpy(np.float64) + sel["overflow"].to_numpy(np.float64))
        total = z.sum(0) + outside
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(total > 0, z / total, np.nan)
            outside = np.where(total > 0, outside / total, np.nan)
        steps = sel["step"].to_numpy(np.int64)
        bsteps, bz = bin_columns(steps, z, max_steps, "mean")
        _, bout = bin_columns(steps, outside[None, :], max_steps, "mean")
        return HistogramOverTime(module, bsteps, edges, bz, bout[0])

    return run.cached(("histogram_over_time", module, rank, max_steps), ("histogram",), compute)


def activation_stat_lines(run: LiveRun, stat: str = "dead_frac", *, rank: int = 0,
                          max_points: int = DEFAULT_POINTS) -> dict[str, pd.DataFrame]:
    """One `step`/`value` series of an `activation_stats` column per module, each downsampled."""
    def compute() -> dict[str, pd.DataFrame]:
        df = run.frame("activation_stats")
        if df.empty:
            return {}
        df = df[df["rank"] == rank]
        out = {}
        for name in sorted(df["name"].unique().tolist(), key=natural_key):
            sel = df[df["name"] == name].drop_duplicates("step", keep="last").sort_values("step")
            out[name] = downsample_series(sel["step"].to_numpy(), sel[stat].to_numpy(np.float64), max_points)
        return out

    return run.cached(("activation_stat_lines", stat, rank, max_points), ("activation_stats",), compute)
