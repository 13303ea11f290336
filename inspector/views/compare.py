"""Several runs side by side: the same series of each, on one step axis."""
from __future__ import annotations

import numpy as np
import pandas as pd

from inspector.views.downsample import DEFAULT_POINTS, downsample_series
from inspector.views.live import LiveRun
from inspector.views.series import grad_norm_name, scalar_series

COMPARE_METRICS = {"loss": "loss", "grad_norm": "global grad norm (before clipping)", "step_ms": "step time (ms)",
                   "imbalance": "expert imbalance (max/mean, mean over layers)"}
"""What the compare page overlays, and how to label it."""


def step_ms_series(run: LiveRun, *, rank: int = 0, max_points: int = DEFAULT_POINTS) -> pd.DataFrame:
    """Total step time (ms) of `rank` per step (`step`, `value`), downsampled."""
    from inspector.views.timing import step_breakdown

    df = step_breakdown(run, rank=rank, max_points=max_points)
    if df.empty:
        return pd.DataFrame(columns=["step", "value"])
    return pd.DataFrame({"step": df["step"].to_numpy(), "value": df["total"].to_numpy(np.float64)})


def imbalance_mean_series(run: LiveRun, *, rank: int = 0, max_points: int = DEFAULT_POINTS) -> pd.DataFrame:
    """Expert imbalance averaged over MoE layers per step (`step`, `value`); empty without experts."""
    def compute() -> pd.DataFrame:
        df = run.frame("expert_load")
        if df.empty:
            return pd.DataFrame(columns=["step", "value"])
        s = df[df["rank"] == rank].groupby("step", sort=True)["imbalance"].mean()
        return downsample_series(s.index.to_numpy(), s.to_numpy(np.float64), max_points)

    return run.cached(("imbalance_mean_series", rank, max_points), ("expert_load",), compute)


def compare_series(run: LiveRun, metric: str, *, rank: int = 0, max_points: int = DEFAULT_POINTS) -> pd.DataFrame:
    """Series `metric` (a key of `COMPARE_METRICS`) of one run as `step`, `value`; empty when not recorded."""
    if metric == "loss":
        return scalar_series(run, "loss", rank=rank, max_points=max_points)
    if metric == "grad_norm":
        name = grad_norm_name(run)
        return scalar_series(run, name, rank=rank, max_points=max_points) if name else \
            pd.DataFrame(columns=["step", "value"])
    if metric == "step_ms":
        return step_ms_series(run, rank=rank, max_points=max_points)
    if metric == "imbalance":
        return imbalance_mean_series(run, rank=rank, max_points=max_points)
    raise ValueError(f"unknown compare metric {metric!r}; known: {', '.join(COMPARE_METRICS)}")
