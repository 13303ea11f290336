"""Straggler detection on a real 4-rank torchrun (gloo, CPU), quiet and with a competing CPU load.

For each load (0 = quiet, the baseline of the same invocation, then `--load` busy-loop processes) it
trains the demo twice, `--slow-rank 2` (the demo's 50 ms delay before each forward) and healthy, and
replays every 20-step window of each run (`at` = 19, 21, ... last) through
- the rule the views use (`inspector.views.ranks.straggler_reasons`: per-step ratios to the other ranks'
  median of each section and of own work, communication and CPU waits taken out, with a lead over the
  slowest other rank; the module docstring has the bar and the measurements behind it), and
- the old rule (window medians of step time or forward+data+optimizer > 1.25 × the median over ranks).
It prints per scenario the slow rank's statistics (median per-step ratio, lead share), the share of
windows where the slow rank is flagged, and the windows with a healthy rank flagged (false flags).

    .venv/bin/python benchmarks/straggler_busy.py [--load 4] [--steps 40] [--out /tmp/straggler-bench]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inspector.views import ranks  # noqa: E402
from inspector.views.live import open_live  # noqa: E402
from inspector.views.timing import phase_ms  # noqa: E402

SLOW = 2
WINDOW = 20


def _spin() -> None:
    while True:
        pass


def demo(out: Path, slow: int | None, load: int, steps: int) -> float:
    """Train the 4-rank demo into `out` while `load` busy loops run; returns the wall seconds."""
    shutil.rmtree(out, ignore_errors=True)
    procs = [mp.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(load)]
    for p in procs:
        p.start()
    t0 = time.perf_counter()
    try:
        cmd = [sys.executable, "-m", "inspector.cli", "demo", "--ranks", "4", "--config", "debug", "--steps", str(steps),
               "--batch-size", "4", "--seq-len", "64", "--out", str(out), "--no-progress", "--no-dash",
               *(["--slow-rank", str(slow)] if slow is not None else [])]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if res.returncode:
            raise SystemExit(f"demo failed:\n{res.stderr[-3000:]}")
    finally:
        for p in procs:
            p.terminate()
    return time.perf_counter() - t0


def old_rule(run, at: int) -> set[int]:
    """Ranks the previous rule flagged: a window median > 1.25 × the median over ranks."""
    steps = ranks.window_steps(run, window=WINDOW, at=at)
    flagged: set[int] = set()
    for phases in (("total",), ranks.COMPUTE_PHASES):
        df = phase_ms(run, phases)
        med = df[df["step"].isin(steps)].groupby("rank")["ms"].median()
        flagged |= set(med.index[med > 1.25 * med.median()].astype(int))
    return flagged


def replay(path: Path, slow: int | None) -> dict[str, float]:
    """Detection over every window of a run; the slow rank's statistics over the last window."""
    run = open_live(path)
    last = int(phase_ms(run, ("total",))["step"].max())
    ends = list(range(WINDOW - 1, last + 1, 2))
    new_hit = old_hit = new_false = old_false = 0
    for at in ends:
        reasons = ranks.straggler_reasons(run, window=WINDOW, at=at)
        new = {r for r, why in reasons.items() if why}
        old = old_rule(run, at)
        new_hit += slow in new
        old_hit += slow in old
        new_false += bool(new - {slow})
        old_false += bool(old - {slow})
    steps = ranks.window_steps(run, window=WINDOW, at=last)
    rks = run.ranks()
    step_S = np.nanmedian(ranks._matrix(phase_ms(run, ("total",)), steps, rks), axis=1)
    verdicts = ranks.judge(ranks._matrix(phase_ms(run, ranks.COMPUTE_PHASES), steps, rks), step_S)
    worst = max(range(len(rks)), key=lambda i: verdicts[i].lead) if slow is None else rks.index(slow)
    med = ranks.compute_ms(run, window=WINDOW)
    return {"windows": len(ends), "rank": rks[worst], "ratio": verdicts[worst].ratio, "lead": verdicts[worst].lead,
            "old_ratio": med[rks[worst]] / float(np.median(list(med.values()))),
            "new_hit": new_hit, "old_hit": old_hit, "new_false": new_false, "old_false": old_false}


def main() -> int:
    """Run the four scenarios per load and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--load", type=int, default=4, help="busy-loop processes of the loaded scenarios")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", default="/tmp/straggler-bench")
    a = p.parse_args()
    print(f"{os.cpu_count()} cores; 4 ranks; window {WINDOW} steps; ratio/lead of the slow rank (healthy: the rank "
          f"with the largest lead); detection and false flags over every 2nd window")
    print(f"{'scenario':<16}{'wall s':>7}{'ratio':>7}{'old ratio':>10}{'lead':>7}  {'flagged (new / old)':<22}"
          f"{'false flags (new / old)':<24}")
    for load in (0, a.load):
        for slow in (SLOW, None):
            name = f"{'quiet' if not load else f'load{load}'}-{'slow' if slow is not None else 'healthy'}"
            wall = demo(Path(a.out) / name, slow, load, a.steps)
            s = replay(Path(a.out) / name, slow)
            n = s["windows"]
            hit = f"{s['new_hit']}/{n} / {s['old_hit']}/{n}" if slow is not None else "-"
            print(f"{name:<16}{wall:>7.1f}{s['ratio']:>7.2f}{s['old_ratio']:>10.2f}{s['lead']:>7.0%}  {hit:<22}"
                  f"{s['new_false']}/{n} / {s['old_false']}/{n}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
