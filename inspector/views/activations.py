"""Activation histograms over time (bins × step) and at one step, with the share of each step's values
the histogram holds (in range, below, above, non-finite), and dead-unit fractions, per module.

A histogram's range may change from step to step (the probe's range follows the data; runs recorded
before that kept one range from warm-up). The heatmap draws every step on one display grid spanning
all the ranges shown (each step's counts re-binned onto it, linear within a bin); the histogram at
one step keeps the step's own recorded bins, exact. Shares are of all the module's output elements
at that step: in range + below + above + non-finite = 1, so what a histogram leaves out is shown.
"""
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
    """Fractions of a module's outputs per bin (rows, bottom = lowest values) and step (columns).

    `z` and the share rows are fractions of all the step's elements; `inside + below + above +
    nonfinite` is 1 for every step (NaN for a step with no elements). `outside` = below + above.
    """

    module: str
    steps: np.ndarray
    edges: np.ndarray
    z: np.ndarray
    outside: np.ndarray
    inside: np.ndarray | None = None
    below: np.ndarray | None = None
    above: np.ndarray | None = None
    nonfinite: np.ndarray | None = None

    @property
    def centers(self) -> np.ndarray:
        """Bin centres (the heatmap's y coordinates)."""
        return (self.edges[:-1] + self.edges[1:]) / 2

    @property
    def empty(self) -> bool:
        """True when the module has no histogram."""
        return self.z.size == 0


@dataclass
class StepHistogram:
    """One recorded histogram as written: its own bins, and the counts it leaves out."""

    module: str
    step: int
    edges: np.ndarray
    counts: np.ndarray
    below: int
    above: int
    nonfinite: int

    @property
    def total(self) -> int:
        """All output elements of the module at this step."""
        return int(self.counts.sum()) + self.below + self.above + self.nonfinite

    @property
    def inside(self) -> float:
        """Share of the elements inside the histogram's range (NaN when there are none)."""
        return float(self.counts.sum() / self.total) if self.total else float("nan")


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


def _module_rows(run: LiveRun, module: str, rank: int) -> pd.DataFrame:
    """The module's histogram rows, one per step in step order, with its `nonfinite` counts joined."""
    df = run.frame("histogram")
    sel = df[(df["rank"] == rank) & (df["name"] == PREFIX + module)] if not df.empty else df
    if sel.empty:
        return sel
    sel = sel.drop_duplicates("step", keep="last").sort_values("step")
    stats = run.frame("activation_stats")
    nonfinite = pd.Series(0, index=sel["step"].to_numpy(), dtype=np.int64)
    if not stats.empty and "nonfinite" in stats:
        st = stats[(stats["rank"] == rank) & (stats["name"] == module)].drop_duplicates("step", keep="last")
        found = st.set_index("step")["nonfinite"].reindex(nonfinite.index)
        nonfinite = found.fillna(0).astype(np.int64)
    return sel.assign(nonfinite=nonfinite.to_numpy())


def _valid_range(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.isfinite(lo) & np.isfinite(hi) & (hi > lo)


def histogram_over_time(run: LiveRun, module: str, *, rank: int = 0,
                        max_steps: int = MAX_HEAT_STEPS) -> HistogramOverTime:
    """The histograms of `module` as fractions [bins, steps] on one grid spanning every step's range,
    with each step's in-range, below, above and non-finite shares."""
    def compute() -> HistogramOverTime:
        sel = _module_rows(run, module, rank)
        if sel.empty:
            return HistogramOverTime(module, np.empty(0, np.int64), np.empty(0), np.empty((0, 0)), np.empty(0),
                                     np.empty(0), np.empty(0), np.empty(0), np.empty(0))
        counts = [np.asarray(c, dtype=np.float64) for c in sel["counts"]]
        lo, hi = sel["lo"].to_numpy(np.float64), sel["hi"].to_numpy(np.float64)
        valid = _valid_range(lo, hi)
        bins = max(len(c) for c in counts)
        glo, ghi = (lo[valid].min(), hi[valid].max()) if valid.any() else (0.0, 1.0)
        edges = np.linspace(glo, ghi, bins + 1)
        cols = []
        for c, a, b, ok in zip(counts, lo, hi, valid):
            if ok and len(c) == bins and a == glo and b == ghi:
                cols.append(c)
            else:
                cols.append(_rebin(c, a, b, edges) if ok and len(c) else np.zeros(bins))
        z = np.stack(cols, axis=1)
        inside = np.array([c.sum() for c in counts])
        shares = np.stack([inside, sel["underflow"].to_numpy(np.float64), sel["overflow"].to_numpy(np.float64),
                           sel["nonfinite"].to_numpy(np.float64)])
        total = shares.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(total > 0, z / total, np.nan)
            shares = np.where(total > 0, shares / total, np.nan)
        steps = sel["step"].to_numpy(np.int64)
        bsteps, bz = bin_columns(steps, z, max_steps, "mean")
        _, bshares = bin_columns(steps, shares, max_steps, "mean")
        inside, below, above, nonfinite = bshares
        return HistogramOverTime(module, bsteps, edges, bz, below + above, inside, below, above, nonfinite)

    return run.cached(("histogram_over_time", module, rank, max_steps), ("histogram", "activation_stats"), compute)


def histogram_at(run: LiveRun, module: str, step: int, *, rank: int = 0) -> StepHistogram | None:
    """The module's histogram recorded at the last step at or before `step` (else its first), with
    its own bins; None when the module has none."""
    def compute() -> StepHistogram | None:
        sel = _module_rows(run, module, rank)
        if sel.empty:
            return None
        steps = sel["step"].to_numpy(np.int64)
        i = max(int(np.searchsorted(steps, step, side="right")) - 1, 0)
        row = sel.iloc[i]
        counts = np.asarray(row["counts"], dtype=np.int64)
        lo, hi = float(row["lo"]), float(row["hi"])
        ok = bool(_valid_range(np.array([lo]), np.array([hi]))[0])
        edges = np.linspace(lo, hi, len(counts) + 1) if ok else np.full(len(counts) + 1, np.nan)
        return StepHistogram(module, int(steps[i]), edges, counts, int(row["underflow"]), int(row["overflow"]),
                             int(row["nonfinite"]))

    return run.cached(("histogram_at", module, step, rank), ("histogram", "activation_stats"), compute)


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


def dead_layers(run: LiveRun, *, rank: int = 0) -> dict[str, int]:
    """Modules flagged `dead_layer` at the latest sampled step that has activation statistics,
    each with the onset step of its current dead period."""
    def compute() -> dict[str, int]:
        an, stats = run.frame("anomaly"), run.frame("activation_stats")
        if an.empty or stats.empty:
            return {}
        an = an[(an["rank"] == rank) & (an["kind"] == "dead_layer")]
        stats = stats[stats["rank"] == rank]
        if an.empty or stats.empty:
            return {}
        out: dict[str, int] = {}
        for module, rows in an.groupby("module", sort=False):
            flagged = set(rows["step"].tolist())
            sampled = np.sort(stats.loc[stats["name"] == module, "step"].unique())
            if not len(sampled) or int(sampled[-1]) not in flagged:
                continue
            onset = int(sampled[-1])
            for s in sampled[::-1]:  # back through the unbroken run of flagged samples
                if int(s) not in flagged:
                    break
                onset = int(s)
            out[str(module)] = onset
        return dict(sorted(out.items(), key=lambda kv: natural_key(kv[0])))

    return run.cached(("dead_layers", rank), ("anomaly", "activation_stats"), compute)
