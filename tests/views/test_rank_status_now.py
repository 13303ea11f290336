"""The rank table's status column is as of now, not as of the last records: a job that hangs writes no
records (only heartbeats), and its ranks must not go on reading "live". Runs written by
`write_hang_run` (real records through the Recorder, heartbeats in the watchdog's format) at the
real clock."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from inspector.views import ranks as ranks_view
from inspector.views.live import LiveRun
from inspector.views.ranks import rank_table
from tests.views.test_hang_runs import culprit, write_hang_run


@pytest.fixture(autouse=True)
def quick_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranks_view, "STATUS_REFRESH_S", 0.05)


def _statuses(run: LiveRun) -> dict[int, str]:
    table = rank_table(run)
    return dict(zip(table["rank"], table["status"]))


def test_a_rank_stuck_outside_a_collective_is_stalled_and_its_peers_waiting(tmp_path: Path) -> None:
    path = write_hang_run(tmp_path / "run", "data", 4, now=time.time())
    bad = culprit(4)
    assert _statuses(LiveRun(path)) == {r: "stalled" if r == bad else "waiting" for r in range(4)}


def test_a_job_that_hangs_after_its_table_was_read_changes_status_without_new_records(tmp_path: Path) -> None:
    path = write_hang_run(tmp_path / "run", "healthy", 4, now=time.time())
    run = LiveRun(path)
    assert set(_statuses(run).values()) == {"live"}
    records = {k: run.version(k) for k in ("scalar", "timing", "system")}
    write_hang_run(path, "data", 4, now=time.time())     # heartbeats only: the records stay as they were
    time.sleep(LiveRun.HEARTBEAT_POLL_S + 0.1)
    got = _statuses(run)
    assert {k: run.version(k) for k in ("scalar", "timing", "system")} == records
    assert got[culprit(4)] == "stalled" and sorted(set(got.values())) == ["stalled", "waiting"]


def test_a_finished_job_reads_finished(tmp_path: Path) -> None:
    path = write_hang_run(tmp_path / "run", "finished", 4, now=time.time())
    assert set(_statuses(LiveRun(path)).values()) == {"finished"}
