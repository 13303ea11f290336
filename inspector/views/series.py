"""Scalar series (loss, lr, grad norm, user metrics) ready to plot, downsampled on the server."""
from __future__ import annotations

import numpy as np
import pandas as pd

from inspector.views.downsample import DEFAULT_POINTS, downsample_series
from inspector.views.live import LiveRun


def scalar_names(run: LiveRun) -> list[str]:
    """Names of every scalar recorded so far, sorted."""
    return run.cached(("scalar_names",), ("scalar",),
                      lambda: sorted(run.frame("scalar")["name"].unique().tolist()))


def scalar_series(run: LiveRun, name: str, *, rank: int | None = 0, steps: tuple[int, int] | None = None,
                  max_points: int = DEFAULT_POINTS) -> pd.DataFrame:
    """Columns `step`, `value` of scalar `name` on `rank` (None: mean over ranks), at most `max_points` rows.

    Downsampling keeps the extremes, so a loss spike survives a 100,000-step run.
    """
    def compute() -> pd.DataFrame:
        df = run.frame("scalar")
        sel = df[df["name"] == name]
        if rank is not None:
            sel = sel[sel["rank"] == rank]
        if steps is not None:
            sel = sel[(sel["step"] >= steps[0]) & (sel["step"] <= steps[1])]
        series = sel.groupby("step", sort=True)["value"].mean() if rank is None else \
            sel.drop_duplicates("step", keep="last").set_index("step")["value"].sort_index()
        return downsample_series(series.index.to_numpy(), series.to_numpy(), max_points)

    return run.cached(("scalar_series", name, rank, steps, max_points), ("scalar",), compute)


def grad_norm_name(run: LiveRun) -> str | None:
    """The scalar that holds the global gradient norm in this run (None if none)."""
    names = scalar_names(run)
    return next((n for n in ("grad_norm/global", "grad_norm") if n in names), None)


APPLIED_NORM = "grad_norm/applied"
CLIP_COEF = "grad_norm/clip_coef"
CLIPPED_BELOW = 1.0 - 1e-4
"""A step counts as clipped when its clip coefficient (applied / pre-clip norm) is below this."""


def clip_threshold(run: LiveRun, *, rank: int = 0) -> float | None:
    """The gradient-clipping threshold, inferred: the median norm the optimizer applied on the steps
    that were clipped (clip coefficient < 1). None when no step was clipped or the run lacks the
    `grad_norm/applied` and `grad_norm/clip_coef` scalars. Inferred, not configured: a loop that
    changes its threshold shows the median."""
    def compute() -> float | None:
        df = run.frame("scalar")
        if df.empty:
            return None
        sel = df[(df["rank"] == rank) & df["name"].isin([APPLIED_NORM, CLIP_COEF])]
        if sel.empty:
            return None
        wide = sel.drop_duplicates(["name", "step"], keep="last").pivot(index="step", columns="name", values="value")
        if APPLIED_NORM not in wide or CLIP_COEF not in wide:
            return None
        coef = wide[CLIP_COEF].to_numpy(np.float64)
        applied = wide[APPLIED_NORM].to_numpy(np.float64)
        clipped = np.isfinite(coef) & np.isfinite(applied) & (coef < CLIPPED_BELOW)
        return float(np.median(applied[clipped])) if clipped.any() else None

    return run.cached(("clip_threshold", rank), ("scalar",), compute)


def grad_norm_series(run: LiveRun, *, rank: int = 0, max_points: int = DEFAULT_POINTS) -> dict[str, pd.DataFrame]:
    """The global gradient norm before clipping and, where recorded, the norm the optimizer applied
    (after clipping), keyed by their chart labels; empty when the run has no gradient norm."""
    name = grad_norm_name(run)
    if name is None:
        return {}
    if name != "grad_norm/global" or APPLIED_NORM not in scalar_names(run):
        return {"grad norm": scalar_series(run, name, rank=rank, max_points=max_points)}
    return {"grad norm (before clipping)": scalar_series(run, name, rank=rank, max_points=max_points),
            "applied (after clipping)": scalar_series(run, APPLIED_NORM, rank=rank, max_points=max_points)}
