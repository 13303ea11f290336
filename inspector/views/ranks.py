"""One row per rank for cluster monitoring: progress, speed, loss, GPU state, stragglers."""
from __future__ import annotations

import numpy as np
import pandas as pd

from inspector.views.live import LiveRun
from inspector.views.timing import phase_ms, recent_median

MAX_MISSING_ROWS = 64
"""Missing ranks listed in the rank table (the rest are counted in the run's problems)."""
RANK_COLUMNS = ["rank", "step", "step_ms", "compute_ms", "tokens_per_s", "loss", "grad_norm", "gpu_util", "gpu_mem_used",
                "gpu_mem_total", "power_w", "temp_c", "status", "straggler"]
"""Columns of `rank_table`, in display order."""

NUMERIC = ["step", "step_ms", "compute_ms", "tokens_per_s", "loss", "grad_norm", "gpu_util", "gpu_mem_used", "gpu_mem_total",
           "power_w", "temp_c"]


def _last_scalar(scalars: pd.DataFrame, name: str) -> dict[int, float]:
    sel = scalars[scalars["name"] == name]
    if sel.empty:
        return {}
    return sel.sort_values("step").groupby("rank")["value"].last().to_dict()


def _last_gpu(system: pd.DataFrame) -> pd.DataFrame:
    """The newest sample of each rank's GPUs, averaged over a rank's GPUs (memory summed)."""
    if system.empty:
        return pd.DataFrame()
    gpu = system[system["device"] != "host"]
    if gpu.empty:
        return pd.DataFrame()
    last = gpu.sort_values("wall_time").groupby(["rank", "device"]).last().reset_index()
    return last.groupby("rank").agg(gpu_util=("gpu_util", "mean"), gpu_mem_used=("mem_used", "sum"),
                                    gpu_mem_total=("mem_total", "sum"), power_w=("power_w", "sum"),
                                    temp_c=("temp_c", "max"))


def straggler_flags(step_ms: dict[int, float], factor: float = 1.25) -> dict[int, bool]:
    """A rank is a straggler when its recent step time exceeds `factor` × the median over ranks."""
    values = [v for v in step_ms.values() if np.isfinite(v)]
    if len(values) < 2:
        return {r: False for r in step_ms}
    median = float(np.median(values))
    return {r: bool(np.isfinite(v) and v > factor * median) for r, v in step_ms.items()}


def rank_table(run: LiveRun, *, window: int = 20, straggler_factor: float = 1.25) -> pd.DataFrame:
    """One row per rank (see `RANK_COLUMNS`); times are medians over the last `window` steps.

    A rank is a straggler when its step time, or its compute time (`compute_ms`: forward + data +
    optimizer, the time outside collectives), exceeds `straggler_factor` × the median over ranks.
    Under synchronous data parallelism the step times are all the slowest rank's, so there the
    compute time is what shows who is slow.
    """
    def compute() -> pd.DataFrame:
        ranks = run.ranks()
        scalars = run.frame("scalar")
        totals = phase_ms(run, ("total",))
        recent = recent_median(totals, window)
        step_ms = {r: recent.get(r, float("nan")) for r in ranks}
        # Progress: the last step timed (system samples carry the step still running).
        timed = totals.groupby("rank")["step"].max().to_dict()
        compute = compute_ms(run, window=window)
        slow_compute = straggler_flags({r: compute.get(r, float("nan")) for r in ranks}, straggler_factor)
        flags = {r: f or slow_compute.get(r, False) for r, f in straggler_flags(step_ms, straggler_factor).items()}
        loss = _last_scalar(scalars, "loss")
        gnorm = _last_scalar(scalars, "grad_norm/global") or _last_scalar(scalars, "grad_norm")
        tps = _last_scalar(scalars, "tokens_per_s")
        gpu = _last_gpu(run.frame("system"))
        rows = []
        for r in ranks:
            g = gpu.loc[r] if r in gpu.index else {}
            rows.append({"rank": r, "step": int(timed.get(r, run.reader.last_step(r))), "step_ms": step_ms[r],
                         "compute_ms": compute.get(r, np.nan),
                         "tokens_per_s": tps.get(r, np.nan), "loss": loss.get(r, np.nan),
                         "grad_norm": gnorm.get(r, np.nan),
                         **{c: float(g[c]) if len(g) and pd.notna(g[c]) else np.nan
                            for c in ("gpu_util", "gpu_mem_used", "gpu_mem_total", "power_w", "temp_c")},
                         "status": run.reader.rank_status(r), "straggler": flags.get(r, False)})
        for r in run.reader.missing_ranks()[:MAX_MISSING_ROWS]:     # in the world, never wrote: say so
            rows.append({"rank": r, "step": np.nan, "status": "missing", "straggler": False})
        return pd.DataFrame(rows, columns=RANK_COLUMNS)

    return run.cached(("rank_table", window, straggler_factor), ("scalar", "timing", "system"), compute)


def rank_summary(table: pd.DataFrame) -> pd.DataFrame:
    """min / median / max over ranks of each numeric column of a `rank_table`."""
    num = table[NUMERIC].astype(float)
    return pd.DataFrame({"min": num.min(), "median": num.median(), "max": num.max()}).T


def step_time_histories(run: LiveRun, *, last: int = 60) -> dict[int, np.ndarray]:
    """The last `last` step times (ms) of every rank, oldest first, in one pass (for per-rank sparklines)."""
    def compute() -> dict[int, np.ndarray]:
        totals = phase_ms(run, ("total",))
        return {int(r): g["ms"].to_numpy(dtype=np.float64)[-last:] for r, g in totals.groupby("rank")}

    return run.cached(("step_time_histories", last), ("timing",), compute)


COMPUTE_PHASES = ("forward", "data", "optimizer")
"""The phases a rank spends outside collectives (backward holds the all-reduce wait)."""


def compute_ms(run: LiveRun, *, window: int = 20) -> dict[int, float]:
    """Per rank: median over the last `window` steps of forward + data + optimizer ms.

    Under synchronous data parallelism every rank's total step time is the slowest rank's (the others
    wait in backward's all-reduce), so only the time spent outside collectives shows who is slow.
    """
    return recent_median(phase_ms(run, COMPUTE_PHASES), window)
