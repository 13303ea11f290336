"""Where a step's time goes: forward / backward / optimizer / data / other, and the slowest modules.

Steps are training steps only: the timing probe records evaluation as its own row (`model`/`eval`,
not a part of the step's total), so an eval between steps does not spike the step time. The
breakdown carries it in a separate `eval` column, to be drawn apart from the stacked phases.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from inspector.views.downsample import DEFAULT_POINTS, downsample_indices
from inspector.views.live import LiveRun

PHASES = ("forward", "backward", "optimizer", "data", "other")
"""The parts a step splits into, in stacking order (they add up to `total`)."""

EVAL = "eval"
"""The breakdown's column of evaluation ms filed with a step (not a part of its total)."""

CPU_WAIT = "cpu_wait"
"""The timing probe's CPU-wait rows (see `inspector.probes.timing`; CPU runs on Linux): name
"cpu_wait", phase "cpu_wait" for the whole step (the ms the training thread was runnable while
another process held its CPU) or "cpu_wait_<phase>" for one section of it."""
_STEP_ROW = {"forward": "model", "backward": "model", "optimizer": "optimizer", "data": "data", "other": "step",
             "total": "step", EVAL: "model", CPU_WAIT: CPU_WAIT}


def phase_ms(run: LiveRun, phases: tuple[str, ...]) -> pd.DataFrame:
    """Per rank and step (every rank), the summed ms of the whole-step rows of `phases`
    (columns `rank`, `step`, `ms`, sorted)."""
    def compute() -> pd.DataFrame:
        df = run.frame("timing")
        if df.empty:
            return pd.DataFrame(columns=["rank", "step", "ms"])
        mask = np.zeros(len(df), dtype=bool)
        for phase in phases:
            mask |= ((df["phase"] == phase) & (df["name"] == _STEP_ROW[phase])).to_numpy()
        last = df[mask].groupby(["rank", "step", "phase"], observed=True)["ms"].last()   # a step written twice counts once
        return last.groupby(level=["rank", "step"]).sum().reset_index().sort_values(["rank", "step"])

    return run.cached(("phase_ms", phases), ("timing",), compute)


def recent_median(per_step: pd.DataFrame, window: int) -> dict[int, float]:
    """Per rank: the median `ms` of the last `window` steps of a `phase_ms` frame."""
    return {int(r): float(np.median(g["ms"].to_numpy()[-window:])) for r, g in per_step.groupby("rank")}


def step_breakdown(run: LiveRun, *, rank: int = 0, max_points: int = DEFAULT_POINTS) -> pd.DataFrame:
    """Per step: milliseconds of forward, backward, optimizer, data, other and total, and of eval
    (0 on steps without one; not in total) (≤ `max_points` rows).

    Downsampling is driven by total + eval, so slow steps and eval steps stay in the picture.
    """
    def compute() -> pd.DataFrame:
        df = run.frame("timing")
        cols = ["step", *PHASES, "total", EVAL]
        if df.empty:
            return pd.DataFrame(columns=cols)
        df = df[df["rank"] == rank]
        wide = {}
        for phase in (*PHASES, "total", EVAL):
            sel = df[(df["phase"] == phase) & (df["name"] == _STEP_ROW[phase])]
            wide[phase] = sel.groupby("step")["ms"].last()
        out = pd.DataFrame(wide).sort_index()
        if out.empty:
            return pd.DataFrame(columns=cols)
        out = out.reindex(columns=[*PHASES, "total", EVAL]).fillna(0.0)
        out.index.name = "step"
        out = out.reset_index()
        idx = downsample_indices(out["step"].to_numpy(), (out["total"] + out[EVAL]).to_numpy(), max_points)
        return out.iloc[idx].reset_index(drop=True)

    return run.cached(("step_breakdown", rank, max_points), ("timing",), compute)


def phase_shares(run: LiveRun, *, rank: int = 0, last: int = 50) -> dict[str, float]:
    """Fraction of step time in each phase over the last `last` steps (empty when nothing is timed)."""
    df = step_breakdown(run, rank=rank, max_points=1 << 62)
    if df.empty:
        return {}
    tail = df.tail(last)
    sums = {p: float(tail[p].sum()) for p in PHASES}
    total = sum(sums.values())
    return {p: v / total for p, v in sums.items()} if total > 0 else {}


def slowest_modules(run: LiveRun, *, rank: int = 0, top: int = 10) -> pd.DataFrame:
    """Modules (not the whole-model rows) with the largest mean forward or backward ms."""
    df = run.frame("timing")
    if df.empty:
        return pd.DataFrame(columns=["name", "phase", "ms"])
    df = df[(df["rank"] == rank) & df["phase"].isin(["forward", "backward"])
            & ~df["name"].isin(["model", "step", "optimizer", "data"])]
    out = df.groupby(["name", "phase"], as_index=False)["ms"].mean()
    return out.sort_values("ms", ascending=False).head(top).reset_index(drop=True)
