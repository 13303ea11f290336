"""The hang verdict end to end: real seeded-fault jobs (torchrun, 2 ranks, gloo, CPU: `tests/hangs/worker.py`)
read by the real `inspector summary` (a subprocess, its own clock) while the hung processes are alive.

For faults 1, 2, 3 and 5 the summary must name the culprit rank (1), what it does (phase, and the
collective rank 0 waits in) and the worker.py line it is stuck on (from the marker comments, not
hard-coded), within 60 s of the hang (from the stuck ranks' last progress, as their heartbeats say).
Fault 4 (SIGKILL mid-backward): on gloo the other rank does not wait (torchrun stops the job), so the
verdict is read after the processes are gone: rank 1 stopped reporting (its last heartbeat's phase). The
loader fault is also read by `inspector tui` in tmux: the Ranks screen's banner and the hang view
(captures under artifacts/tui/). Every job's processes are killed at the end (`Job.kill`).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hangs import worker
from tests.hangs.harness import Job, start_job

HANG_AFTER_S = 5.0
START_S = 180.0        # torchrun start-up and 5 steps on a busy 2-core machine
VERDICT_S = 60.0       # the budget from the hang to the verdict
STEP = 5
SEQ = STEP + 1         # the metric all-reduce of step 5 is the 6th collective of the metrics group
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "tui"
GROUP = r" \(group metrics\)"   # the group_desc the worker gave its metrics group


def _where(marker: str) -> str:
    return re.escape(f"worker.py:{worker.fault_line(marker)}")


EXPECTED = {
    "skip_allreduce": [rf"rank 1 never entered all_reduce #{SEQ}{GROUP} that rank 0 waits in: rank 1 is in backward"
                       rf"[^\n]*inside ddp_allreduce[^\n]*{_where('stuck: backward')}"],
    "loader_sleep": [rf"rank 1 never entered all_reduce #{SEQ}{GROUP} that rank 0 waits in: rank 1 is in data"
                     rf"[^\n]*{_where('fault: loader_sleep')}"],
    "forward_loop": [rf"rank 1 never entered all_reduce #{SEQ}{GROUP} that rank 0 waits in: rank 1 is in forward "
                     rf"\(module\.layers\.1\)[^\n]*{_where('fault: forward_loop')}"],
    "mismatch": [rf"mismatch at #{SEQ}{GROUP}: rank 0 calls all_reduce \[1\]; rank 1 calls broadcast \[1\]: "
                 rf"rank 1 is at {_where('fault: mismatch')}"],
}


def _inspector() -> list[str]:
    exe = Path(sys.executable).with_name("inspector")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "inspector.cli"]


def summary(run_dir: Path, check: bool = True) -> str:
    """`inspector summary RUN` as a user runs it (wide, so the headline stays on one line)."""
    out = subprocess.run([*_inspector(), "summary", str(run_dir), "--width", "400"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, timeout=120)
    assert out.returncode == 0 or not check, out.stderr
    return out.stdout if out.returncode == 0 else out.stderr


def hang_start(job: Job) -> float:
    """When the hang began: the earliest last progress of a rank that is stalled now."""
    beats = [job.heartbeat(r) for r in range(job.nproc)]
    stalled = [hb.last_progress for hb in beats if hb is not None and hb.stalled_s >= HANG_AFTER_S]
    return min(stalled) if stalled else float("inf")


def wait_verdict(job: Job, patterns: list[str]) -> tuple[str, float]:
    """Run the summary until it matches every pattern; (its output, seconds from the hang to it)."""
    end = time.monotonic() + START_S + VERDICT_S
    text = ""
    while time.monotonic() < end:
        assert job.alive(), f"the job ended:\n{job.log_tail()}"
        if not (job.run_dir / "run.json").exists():     # torchrun still starting
            time.sleep(1.0)
            continue
        text = summary(job.run_dir, check=False)
        if all(re.search(p, text) for p in patterns):
            return text, time.time() - hang_start(job)
        time.sleep(1.0)
    raise AssertionError(f"no verdict matching {patterns}:\n{text}\njob log:\n{job.log_tail()}")


@pytest.mark.parametrize("fault", list(EXPECTED))
def test_summary_names_the_culprit_while_the_job_hangs(tmp_path: Path, fault: str) -> None:
    with start_job(fault, tmp_path / "run", step=STEP, hang_after_s=HANG_AFTER_S) as job:
        text, after_s = wait_verdict(job, EXPECTED[fault])
        assert job.alive()
        if fault == "loader_sleep" and shutil.which("tmux"):
            tui_in_tmux(job.run_dir, tmp_path)
    assert job.left() == []
    assert "HANG" in text.splitlines()[1]              # the section right under the run's header line
    assert after_s <= VERDICT_S, f"verdict {after_s:.0f} s after the hang"


def test_sigkill_verdict_after_the_job_ended(tmp_path: Path) -> None:
    with start_job("sigkill", tmp_path / "run", step=STEP, hang_after_s=HANG_AFTER_S,
                   extra_args=("--step-sleep", "0.4")) as job:
        job.wait_exit(START_S)
        last = job.heartbeat(1)
        time.sleep(3.5 * last.heartbeat_s)       # every heartbeat is stale by now
        text = summary(job.run_dir)
    assert job.left() == []
    # The phase is the one of its last heartbeat (1 s apart): backward, or the step's sleep just before.
    # torchrun kills rank 0 too, a moment later: its heartbeat, written when its collective failed,
    # is what singles rank 1 out.
    assert re.search(r"HANG  rank 1 stopped reporting \(killed or crashed\?\), last seen in \w+( \([^)]*\))?"
                     r"(, inside [^;]+)? at step [45]\b[^\n]*; rank 0 saw \S+ #\d+( \(group [^)]+\))? fail \(", text), text
    assert "the processes are gone" in text


def tui_in_tmux(run_dir: Path, tmp_path: Path) -> None:
    """`inspector tui RUN` in a tmux pane: the banner on the Ranks screen, then `h`: the hang view."""
    from tests.tui.test_tmux import Pane

    pane = Pane(tmp_path / "tmux.sock")
    argv = ["env", "-u", "COLUMNS", "-u", "LINES", *_inspector(), "tui", str(run_dir), "--interval", "0.5"]
    cmd = " ".join(f"'{a}'" for a in argv)
    try:
        pane.tmux("new-session", "-d", "-s", "app", "-x", "160", "-y", "40", cmd)
        ranks = pane.wait_for(r"HANG", r"rank 1 never entered all_reduce", r"h: hang view", timeout=60)
        pane.tmux("send-keys", "-t", "app", "h")
        view = pane.wait_for(r"stuck ranks: 2 of 2", r"rank 1 main thread", rf"worker\.py:{worker.fault_line('fault: loader_sleep')}",
                             timeout=30)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "tmux_capture_hang_banner.txt").write_text(ranks)
        (ARTIFACTS / "tmux_capture_hang_view.txt").write_text(view)
        pane.tmux("send-keys", "-t", "app", "q")
    finally:
        subprocess.run(pane.base + ["kill-server"], capture_output=True)
