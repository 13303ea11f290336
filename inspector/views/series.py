"""Scalar series (loss, lr, grad norm, user metrics) ready to plot, downsampled on the server."""
from __future__ import annotations

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
