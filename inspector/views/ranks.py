"""One row per rank for cluster monitoring: progress, speed, loss, GPU state, stragglers."""
from __future__ import annotations

import numpy as np
import pandas as pd

from inspector.views.live import LiveRun
from inspector.views.timing import step_totals

RANK_COLUMNS = ["rank", "step", "step_ms", "tokens_per_s", "loss", "grad_norm", "gpu_util", "gpu_mem_used",
                "gpu_mem_total", "power_w", "temp_c", "status", "straggler"]
"""Columns of `rank_table`, in display order."""

NUMERIC = ["step", "step_ms", "tokens_per_s", "loss", "grad_norm", "gpu_util", "gpu_mem_used", "gpu_mem_total",
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
    """One row per rank (see `RANK_COLUMNS`); step time is the median of the last `window` steps."""
    def compute() -> pd.DataFrame:
        ranks = run.ranks()
        scalars = run.frame("scalar")
        timing = run.frame("timing")
        totals = timing[(timing["name"] == "step") & (timing["phase"] == "total")] if not timing.empty else timing
        recent = (totals.sort_values("step").groupby("rank")["ms"]
                  .apply(lambda ms: float(np.median(ms.to_numpy()[-window:]))).to_dict()) if len(totals) else {}
        step_ms = {r: recent.get(r, float("nan")) for r in ranks}
        flags = straggler_flags(step_ms, straggler_factor)
        loss = _last_scalar(scalars, "loss")
        gnorm = _last_scalar(scalars, "grad_norm/global") or _last_scalar(scalars, "grad_norm")
        tps = _last_scalar(scalars, "tokens_per_s")
        gpu = _last_gpu(run.frame("system"))
        rows = []
        for r in ranks:
            g = gpu.loc[r] if r in gpu.index else {}
            rows.append({"rank": r, "step": run.reader.last_step(r), "step_ms": step_ms[r],
                         "tokens_per_s": tps.get(r, np.nan), "loss": loss.get(r, np.nan),
                         "grad_norm": gnorm.get(r, np.nan),
                         **{c: float(g[c]) if len(g) and pd.notna(g[c]) else np.nan
                            for c in ("gpu_util", "gpu_mem_used", "gpu_mem_total", "power_w", "temp_c")},
                         "status": run.reader.rank_status(r), "straggler": flags.get(r, False)})
        return pd.DataFrame(rows, columns=RANK_COLUMNS)

    return run.cached(("rank_table", window, straggler_factor), ("scalar", "timing", "system"), compute)


def rank_summary(table: pd.DataFrame) -> pd.DataFrame:
    """min / median / max over ranks of each numeric column of a `rank_table`."""
    num = table[NUMERIC].astype(float)
    return pd.DataFrame({"min": num.min(), "median": num.median(), "max": num.max()}).T


def step_time_history(run: LiveRun, rank: int, *, last: int = 60) -> np.ndarray:
    """The last `last` step times (ms) of `rank`, oldest first."""
    return step_totals(run, rank=rank)[-last:]
