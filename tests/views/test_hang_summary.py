"""`inspector summary` with a hang: the red HANG section at the top, the stuck-ranks table, the frames.

The view (`run_summary(...).hang`) on the synthetic runs at their own clock, and the real CLI in a
subprocess on a run written against the real clock.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from inspector.summary_report import print_summary
from inspector.views.live import LiveRun
from inspector.views.summary import run_summary
from tests.views.test_hang_runs import CULPRIT_AT, NOW, SEQ, write_hang_run


def report(path: Path, now: float = NOW) -> str:
    run = LiveRun(path)
    try:
        con = Console(width=160, record=True, force_terminal=False)
        print_summary(run_summary(run, now=now), con)
        return con.export_text()
    finally:
        run.close()


@pytest.mark.parametrize("fault", ["healthy", "finished"])
def test_no_hang_section(tmp_path: Path, fault: str) -> None:
    text = report(write_hang_run(tmp_path / fault, fault, 4))
    assert "HANG" not in text and "stuck ranks" not in text


def test_hang_section_is_first_and_names_rank_phase_collective_and_frame(tmp_path: Path) -> None:
    text = report(write_hang_run(tmp_path / "data", "data", 4))
    lines = text.splitlines()
    hang = next(i for i, line in enumerate(lines) if "HANG" in line)
    assert hang == 1                                           # right under the run's one-line header
    assert lines.index("no non-finite values recorded") > hang
    assert f"rank 1 never entered all_reduce #{SEQ} that ranks 0,2,3 wait in: rank 1 is in data (loader)" in text
    row = next(line for line in lines if line.startswith("│ 1 "))
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert cells[:5] == ["1", "stalled", "7", "data", "loader"] and cells[-1] == "worker.py:57"
    w = CULPRIT_AT["data"]
    assert f"worker.py:57 in {w.function}  {w.file}" in text
    assert "innermost: distributed_c10d.py:2501 in all_reduce" in text


def test_killed_and_gone(tmp_path: Path) -> None:
    killed = report(write_hang_run(tmp_path / "killed", "killed", 4))
    assert "rank 1 stopped reporting (killed or crashed?), last seen in forward (layers.0)" in killed
    assert "silent 30 s" in killed and "rank 1: no stack dump (it stopped before its watchdog saw a stall)" in killed
    gone = report(write_hang_run(tmp_path / "gone", "gone", 4))
    assert "the processes are gone" in gone and f"rank 1 never entered all_reduce #{SEQ}" in gone


def test_cli_prints_the_verdict_of_a_live_run(tmp_path: Path) -> None:
    """The real `inspector summary` (its own clock) on heartbeats written just now."""
    path = write_hang_run(tmp_path / "live", "forward", 4, now=time.time())
    exe = Path(sys.executable).with_name("inspector")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "inspector.cli"]
    out = subprocess.run([*cmd, "summary", str(path), "--width", "200"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"rank 1 never entered all_reduce #{SEQ} that ranks 0,2,3 wait in: rank 1 is in forward (layers.1.attn)" \
        in out.stdout
    assert "model.py:120" in out.stdout
