"""Acknowledged records lost over N `kill -9` of a writer (goal: 0), with a figure per round.

Usage: python benchmarks/kill9_store.py [--rounds 200] [--seed 0]
Each round resumes the same run directory after the previous kill (a new writer session), so
this also checks that sessions written after crashes stay apart and intact.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.store.kill_loop import kill_loop  # noqa: E402


def main() -> None:
    """Run the rounds and print acknowledged / lost / checksum failures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        report = kill_loop(Path(tmp) / "run", a.rounds, seed=a.seed)
        took = time.monotonic() - t0
    print(f"kill -9 rounds: {report.rounds}  acknowledged steps: {report.acked}  lost: {report.lost}  "
          f"other problems: {report.checksum_failures}  ({took:.0f} s)")
    for line in report.problems[:5]:
        print("  ", line)
    sys.exit(1 if report.lost or report.checksum_failures else 0)


if __name__ == "__main__":
    main()
