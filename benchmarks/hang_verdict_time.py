"""Time from hang to verdict for the seeded hang faults (issue 15): each fault's real 2-rank torchrun job
(gloo, CPU, `tests/hangs/worker.py`) runs until `inspector summary` (a subprocess, as a user runs it) prints
the expected verdict; the time is counted from the hang's start (the stuck ranks' last progress, from their
heartbeats). The figure is against the watchdog's own floor, `hang_after_s` + one heartbeat period: the
verdict cannot come sooner, by design.

    .venv/bin/python benchmarks/hang_verdict_time.py [--hang-after-s 5] [--faults skip_allreduce,...]
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hangs.harness import start_job  # noqa: E402
from tests.hangs.test_verdict_e2e import EXPECTED, STEP, hang_start, summary  # noqa: E402

HEARTBEAT_S = 1.0


def time_to_verdict(fault: str, work: Path, hang_after_s: float, timeout_s: float = 240.0) -> float:
    """Seconds from the hang to the first summary that matches the fault's expected verdict."""
    with start_job(fault, work / fault, step=STEP, hang_after_s=hang_after_s) as job:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if not job.alive():
                raise RuntimeError(f"{fault}: the job ended\n{job.log_tail()}")
            if (job.run_dir / "run.json").exists():
                text = summary(job.run_dir, check=False)
                if all(re.search(p, text) for p in EXPECTED[fault]):
                    return time.time() - hang_start(job)
            time.sleep(0.5)
    raise TimeoutError(f"{fault}: no verdict in {timeout_s:.0f} s")


def main() -> None:
    """Run each fault in turn and print its time to verdict."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hang-after-s", type=float, default=5.0)
    ap.add_argument("--faults", default=",".join(EXPECTED))
    args = ap.parse_args()
    floor = args.hang_after_s + HEARTBEAT_S
    print(f"hang_after_s {args.hang_after_s:g} s, heartbeat {HEARTBEAT_S:g} s: floor {floor:g} s; budget 60 s")
    with tempfile.TemporaryDirectory() as tmp:
        for fault in args.faults.split(","):
            seconds = time_to_verdict(fault, Path(tmp), args.hang_after_s)
            print(f"{fault:16s} verdict {seconds:5.1f} s after the hang ({seconds / floor:.2f}x the floor)", flush=True)


if __name__ == "__main__":
    main()
