"""A light multi-rank writer (scalars, timing, system samples), for 64–256-rank tests and the benchmark.

All ranks write from one process, step by step (one Recorder per rank), so a run of any width can be
written quickly or paced as a live run. The last rank is 1.5× slower than the others.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from inspector.store.recorder import Recorder

NAMES = ["layers.0", "layers.0", "model", "model", "optimizer", "step", "step"]
PHASES = ["forward", "backward", "forward", "backward", "optimizer", "other", "total"]


def base_ms(rank: int, ranks: int) -> float:
    """Nominal step time of `rank` (the last rank is the slow one)."""
    return 100.0 * (1.5 if rank == ranks - 1 else 1.0)


def write_many_ranks(path: str | Path, ranks: int, steps: int, *, rate: float = 0.0, hold: float = 0.0,
                     ranks_per_node: int = 0, flush_interval: float = 0.2) -> None:
    """Write `steps` steps on `ranks` ranks at `rate` steps/s (0: flat out).

    With `hold`, the recorders then stay open that many seconds without writing (a live, quiet run).
    With `ranks_per_node`, rank r is recorded as running on host "node-NNNN" (r // ranks_per_node).
    `flush_interval`: each Recorder's (1,024 live writer threads waking 5 times a second take most of
    2 cores; real ranks each have their own machine).
    """
    def host(r: int) -> str | None:
        return f"node-{r // ranks_per_node:04d}" if ranks_per_node else None

    rng = np.random.default_rng(0)
    if not rate and not hold:         # a finished run: one rank at a time (1,024 writer threads thrash 2 cores)
        for r in range(ranks):
            with Recorder(path, rank=r, world_size=ranks, name="many", flush_interval=0.2, host=host(r)) as rec:
                for s in range(steps):
                    _write_step(rec, r, s, ranks, rng)
        return
    recs = [Recorder(path, rank=r, world_size=ranks, name="many", flush_interval=flush_interval, host=host(r))
            for r in range(ranks)]
    t0 = time.monotonic()
    try:
        for s in range(steps):
            for r, rec in enumerate(recs):
                _write_step(rec, r, s, ranks, rng)
            if rate:
                time.sleep(max(0.0, t0 + (s + 1) / rate - time.monotonic()))
        for rec in recs:
            rec.flush()
        time.sleep(hold)
    finally:
        for rec in recs:
            rec.close()


def _write_step(rec: Recorder, r: int, s: int, ranks: int, rng: np.random.Generator) -> None:
    """One step of rank `r`: scalars, timing rows, a GPU sample every 5 steps."""
    b = base_ms(r, ranks) + rng.uniform(0, 2)
    rec.scalars({"loss": 5.0 / (1 + s / 50) + 0.01 * r, "lr": 1e-3, "grad_norm/global": 1.0,
                 "tokens_per_s": 4096 / b * 1000}, step=s)
    rec.submit("timing", {"name": NAMES, "phase": PHASES,
                          "ms": [b * .15, b * .25, b * .3, b * .5, b * .1, b * .1, b]}, len(NAMES), step=s)
    if s % 5 == 0:
        rec.submit("system", {"device": "cuda:0", "gpu_util": 95.0, "mem_used": 7e10, "mem_total": 8e10,
                              "power_w": 600.0, "temp_c": 70.0, "sm_clock_mhz": 1900.0}, 1, step=s)
