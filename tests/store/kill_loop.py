"""`kill -9` a writer again and again on one run directory, and count acknowledged records lost.

Each round starts `writer_script.py` on the same run (so every round is a new writer session
resuming after a crash), waits until a random number of steps were acknowledged (`flush()`
returned), kills it with SIGKILL, and checks that the reader returns every acknowledged step of
that session. Used by a test (a few rounds) and by `benchmarks/kill9_store.py` (200 rounds).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from inspector.store import open_run

WRITER = str(Path(__file__).with_name("writer_script.py"))


@dataclass
class KillReport:
    """What the rounds did and what was lost."""

    rounds: int = 0
    acked: int = 0                     # acknowledged steps over all rounds
    lost: int = 0                      # acknowledged steps the reader did not return
    checksum_failures: int = 0         # problems other than torn tails and resumes
    problems: list[str] = field(default_factory=list)


def _kill_after(run: Path, acks: int, maps: bool) -> int:
    """Start a writer, kill -9 it after `acks` acknowledged flushes; the last acknowledged step."""
    args = [sys.executable, WRITER, str(run), "100000", "0", "--segment-bytes", "16384"] + (["--maps"] if maps else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    last, seen = -1, 0
    try:
        for line in proc.stdout:
            if line.startswith("flushed"):
                last, seen = int(line.split()[1]), seen + 1
                if seen >= acks:
                    break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    return last


def kill_loop(run: Path, rounds: int, *, seed: int = 0, maps: bool = True) -> KillReport:
    """Run `rounds` kill -9 rounds on `run` and check every acknowledged record after each."""
    rng, report = random.Random(seed), KillReport()
    for session in range(rounds):
        acked = _kill_after(run, rng.randint(1, 40), maps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = open_run(run, stale_after=0.0)
            df = reader.to_pandas("scalar", names=["step_echo"])
        got = set(df.loc[df["session"] == session, "step"])
        report.rounds += 1
        report.acked += acked + 1
        report.lost += sum(1 for s in range(acked + 1) if s not in got)
        bad = [p for p in reader.problems if "torn" not in p and "a resume" not in p]
        report.checksum_failures = len(bad)
        report.problems = bad
        reader.close()
    return report
