"""The run header (status, step, ranks, elapsed, tokens/s) and the overview page's scalar choices."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from inspector.views.inference import ITERATION_KIND as ITERATIONS
from inspector.views.live import LiveRun
from inspector.views.series import scalar_names


@dataclass
class RunHeader:
    """What the top of every page says about a run."""

    name: str
    status: str
    step: int
    ranks: int
    world_size: int
    elapsed_s: float
    tokens_per_s: float | None
    problems: int = 0
    tokens_label: str = "tok/s"
    """"tok/s" (training: the `tokens_per_s` scalar) or "gen tok/s" (a run recorded in inference mode)."""

    def line(self) -> str:
        """One line of text: "name · live · step 120 · 2/2 ranks · 3m 05s · 12,345 tok/s" (and
        "· ⚠ 2 problems" when the reader found damage or loss)."""
        tps = f"{self.tokens_per_s:,.0f} {self.tokens_label}" if self.tokens_per_s is not None else "tok/s N/A"
        warn = f" · ⚠ {self.problems} problem{'s' if self.problems != 1 else ''}" if self.problems else ""
        return (f"{self.name} · {self.status} · step {max(self.step, 0):,} · {self.ranks:,}/{self.world_size:,} ranks"
                f" · {format_duration(self.elapsed_s)} · {tps}{warn}")


def format_duration(seconds: float) -> str:
    """"1h 02m", "3m 05s" or "12s"."""
    s = int(max(seconds, 0))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def run_header(run: LiveRun, *, window: int = 10, now: float | None = None) -> RunHeader:
    """The header of `run`: tokens/s is the sum over ranks of each rank's mean over its last `window` steps.
    A run recorded in inference mode has no such scalar: it shows generated tokens/s instead (every
    output token, a request's first included, over the iterations' wall time, summed over ranks: the
    last `ITERATION_WINDOW` iterations while live, the whole run once it has ended).

    Elapsed time runs from the run's creation to its newest record (to now while it is live).
    """
    status = run.status()
    scalars = run.frame("scalar")
    tps = None
    if not scalars.empty:
        sel = scalars[scalars["name"] == "tokens_per_s"]
        if not sel.empty:
            last = sel.sort_values("step", kind="stable").groupby("rank").tail(window)   # no Python per rank
            per_rank = last.groupby("rank")["value"].mean()
            tps = float(per_rank.sum())
    label = "tok/s"
    if tps is None:
        gen = generated_tokens_per_s(run, live=status == "live")
        if gen is not None:
            tps, label = gen, "gen tok/s"
    last_wall = max((float(run.frame(k)["wall_time"].max()) for k in ("scalar", "timing", "system", ITERATIONS)
                     if not run.frame(k).empty), default=float(run.meta.created))
    end = (now or time.time()) if status == "live" else last_wall
    return RunHeader(name=run.meta.name, status=status, step=run.last_step(), ranks=len(run.ranks()),
                     world_size=run.meta.world_size, elapsed_s=max(0.0, end - float(run.meta.created)),
                     tokens_per_s=tps if tps is None or np.isfinite(tps) else None,
                     problems=len(run.problems()), tokens_label=label)


ITERATION_WINDOW = 64
"""Iterations per rank the live header's generated tokens/s is taken over."""


def generated_tokens_per_s(run: LiveRun, *, live: bool) -> float | None:
    """Output tokens per second of a run recorded in inference mode (None: no iteration rows)."""
    it = run.frame(ITERATIONS)
    if it.empty:
        return None
    if live:
        it = it.sort_values("step", kind="stable").groupby("rank").tail(ITERATION_WINDOW)
    # each prefilled request's first token comes out of its prefill forward
    tokens = it["generation_tokens"].fillna(0) + it["prefill_requests"].fillna(0)
    per_rank = pd.DataFrame({"rank": it["rank"], "tokens": tokens, "s": it["ms"].fillna(0) / 1e3}).groupby("rank").sum()
    per_rank = per_rank[per_rank["s"] > 0]
    return float((per_rank["tokens"] / per_rank["s"]).sum()) if len(per_rank) else None


def eval_loss_name(run: LiveRun) -> str | None:
    """The evaluation loss scalar ("eval/val_loss", "eval/loss", ...), or None."""
    names = [n for n in scalar_names(run) if n.startswith("eval") and "loss" in n]
    return sorted(names, key=lambda n: (not n.endswith("val_loss"), n))[0] if names else None
