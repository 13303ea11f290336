"""GPU and host samples over time, per rank and device, ready to plot (downsampled)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from inspector.views.downsample import DEFAULT_POINTS, downsample_indices
from inspector.views.live import LiveRun
from inspector.views.timing import CPU_WAIT, phase_ms

GPU_METRICS = {"gpu_util": "GPU utilisation (%)", "mem_used": "GPU memory used (GiB)", "power_w": "power (W)",
               "temp_c": "temperature (°C)"}
"""GPU columns of `system` samples and how to label them."""

HOST_METRICS = {"cpu_percent": "host CPU (%)", "rss": "host RSS (GiB)"}
"""Host columns of `system` samples and how to label them."""

_BYTES = {"mem_used", "mem_total", "rss", "torch_allocated", "torch_reserved", "torch_peak"}
GIB = float(1 << 30)


MAX_SERIES = 32
"""Above this many (rank, device) series a chart gets three lines instead: the minimum, median and
maximum over them at each step (1,024 ranks' lines are neither readable nor drawable)."""


def system_series(run: LiveRun, metric: str, *, max_points: int = DEFAULT_POINTS) -> dict[str, pd.DataFrame]:
    """One series per (rank, device) of `metric`: columns `t` (seconds since the run's first sample),
    `step`, `value` (bytes shown in GiB); keys like "r0 cuda:0" or "r1 host". Empty when N/A. Above
    `MAX_SERIES` series: "min of N", "median of N", "max of N" per step instead."""
    def compute() -> dict[str, pd.DataFrame]:
        df = run.frame("system")
        if df.empty or metric not in df:
            return {}
        host = metric in HOST_METRICS
        df = df[(df["device"] == "host") == host]
        df = df[df[metric].notna()]
        if df.empty:
            return {}
        t0 = float(run.frame("system")["wall_time"].min())
        groups = df.groupby(["rank", "device"], sort=True)
        if groups.ngroups > MAX_SERIES:
            return _spread_series(df, metric, t0, groups.ngroups, max_points)
        out: dict[str, pd.DataFrame] = {}
        for (rank, device), sel in df.groupby(["rank", "device"], sort=True):
            sel = sel.sort_values("wall_time")
            t = sel["wall_time"].to_numpy(np.float64) - t0
            v = sel[metric].to_numpy(np.float64) / (GIB if metric in _BYTES else 1.0)
            idx = downsample_indices(t, v, max_points)
            out[f"r{rank} {device}"] = pd.DataFrame({"t": t[idx], "step": sel["step"].to_numpy()[idx], "value": v[idx]})
        return out

    return run.cached(("system_series", metric, max_points), ("system",), compute)


def _spread_series(df: pd.DataFrame, metric: str, t0: float, n: int, max_points: int) -> dict[str, pd.DataFrame]:
    """min / median / max of `metric` over all (rank, device) series at each step."""
    scale = GIB if metric in _BYTES else 1.0
    per_step = df.groupby("step").agg(t=("wall_time", "median"), lo=(metric, "min"), mid=(metric, "median"),
                                      hi=(metric, "max")).reset_index()
    t = per_step["t"].to_numpy(np.float64) - t0
    out = {}
    for col, label in (("hi", f"max of {n:,}"), ("mid", f"median of {n:,}"), ("lo", f"min of {n:,}")):
        v = per_step[col].to_numpy(np.float64) / scale
        idx = downsample_indices(t, v, max_points)
        out[label] = pd.DataFrame({"t": t[idx], "step": per_step["step"].to_numpy()[idx], "value": v[idx]})
    return out


def has_gpu_samples(run: LiveRun) -> bool:
    """True when any GPU sample carries a utilisation value (False without NVML: N/A)."""
    df = run.frame("system")
    return bool(not df.empty and (df["device"] != "host").any() and df["gpu_util"].notna().any())


def cpu_wait_series(run: LiveRun) -> dict[str, pd.DataFrame]:
    """Per rank, the ms of each step its training thread waited for a CPU another process held
    (`step`, `value`; the timing probe's CPU runs on Linux): "r0", "r1", …; above `MAX_SERIES`
    ranks, "min / median / max of N" per step. Empty when none was recorded."""
    def compute() -> dict[str, pd.DataFrame]:
        df = phase_ms(run, (CPU_WAIT,))
        if df.empty:
            return {}
        n = df["rank"].nunique()
        if n > MAX_SERIES:
            per_step = df.groupby("step")["ms"].agg(["min", "median", "max"]).reset_index()
            lines = {f"{stat} of {n:,}": (per_step["step"].to_numpy(), per_step[stat].to_numpy(np.float64))
                     for stat in ("max", "median", "min")}
        else:
            lines = {f"r{rank}": (sel["step"].to_numpy(), sel["ms"].to_numpy(np.float64))
                     for rank, sel in df.groupby("rank", sort=True)}
        out = {}
        for label, (steps, ms) in lines.items():
            idx = downsample_indices(steps.astype(np.float64), ms, DEFAULT_POINTS)
            out[label] = pd.DataFrame({"step": steps[idx], "value": ms[idx]})
        return out

    return run.cached(("cpu_wait_series",), ("timing",), compute)
