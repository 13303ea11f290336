"""The watchdog's files of real seeded-fault jobs (torchrun, 2 ranks, gloo, CPU; `tests/hangs/worker.py`).

For each hang (faults 1, 2, 3, 5) the stuck ranks' heartbeat.json shows the phase they are stuck in
and the collective (op, group, sequence number) that tells who is missing from which collective,
and a stack dump appears within 60 s of the hang whose main thread's frames include the line of
worker.py the rank is stuck on (found from the marker comments with `inspect`, not hard-coded).
Fault 4 (SIGKILL mid-backward): the killed rank's heartbeat stops, not closed; on gloo the other
rank does not wait (gloo reports "Connection closed by peer" at once and torchrun stops the job).
A healthy run: no dump, every rank's last heartbeat closed. Every process is killed after each job.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from inspector.store.heartbeat_format import Heartbeat
from tests.hangs import worker
from tests.hangs.harness import Job, start_job
from tests.hangs.stacks import Dump, parse_dump

HANG_AFTER_S = 5.0
START_S = 180.0      # torchrun start-up, 5 steps and the stall, on a busy 2-core machine
WORKER = str(Path(worker.__file__).resolve())


@dataclass
class Stuck:
    """What a stuck rank's files must show."""

    phase: str
    marker: str            # the worker line's marker comment (its line must be among the main thread's frames)
    op: str | None = None  # the collective the heartbeat names (None: no check)
    module: str | None = None


FAULT_STEP = 5
EXPECTED = {
    "skip_allreduce": {0: Stuck("collective", "collective: metric", "all_reduce"),
                       1: Stuck("backward", "stuck: backward", "ddp_allreduce")},
    "loader_sleep": {0: Stuck("collective", "collective: metric", "all_reduce"),
                     1: Stuck("data", "fault: loader_sleep")},
    "forward_loop": {0: Stuck("collective", "collective: metric", "all_reduce"),
                     1: Stuck("forward", "fault: forward_loop", module="module.layers.1")},
    "mismatch": {0: Stuck("collective", "collective: metric", "all_reduce"),
                 1: Stuck("collective", "fault: mismatch", "broadcast")},
}


@dataclass
class Seen:
    """What a hung job left, read while its processes were alive."""

    heartbeats: dict[int, Heartbeat]
    dumps: dict[int, Dump]
    dump_names: dict[int, list[str]]
    left: list[int]        # process groups still alive after the kill


def _stuck_as_expected(job: Job, fault: str) -> dict[int, Heartbeat] | None:
    out = {}
    for rank, want in EXPECTED[fault].items():
        hb = job.heartbeat(rank)
        if hb is None or not hb.dumps or hb.phase != want.phase:
            return None
        out[rank] = hb
    return out


@pytest.fixture(scope="module")
def hung(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Seen]]:
    """Each hang fault run once (one after the other: forward_loop spins a core), lazily."""
    cache: dict[str, Seen] = {}

    class Runs(dict):
        def __missing__(self, fault: str) -> Seen:
            run_dir = tmp_path_factory.mktemp(fault) / "run"
            with start_job(fault, run_dir, step=FAULT_STEP, hang_after_s=HANG_AFTER_S) as job:
                heartbeats = job.wait_for(lambda: _stuck_as_expected(job, fault), START_S,
                                          what=f"{fault}: both ranks stuck as expected, with a dump")
                assert job.alive()
                dumps = {r: parse_dump(job.rank_dir(r) / hb.dumps[0]) for r, hb in heartbeats.items()}
                names = {r: [p.name for p in job.dumps(r)] for r in heartbeats}
            cache[fault] = Seen(heartbeats, dumps, names, job.left())
            self[fault] = cache[fault]
            return cache[fault]

    yield Runs()


HANGS = list(EXPECTED)


@pytest.mark.parametrize("fault", HANGS)
def test_stuck_phase_and_step(hung, fault: str) -> None:
    seen = hung[fault]
    for rank, want in EXPECTED[fault].items():
        hb = seen.heartbeats[rank]
        assert (hb.rank, hb.world_size, hb.step, hb.phase) == (rank, 2, FAULT_STEP, want.phase)
        assert not hb.closed
        assert hb.stalled_s >= HANG_AFTER_S
        if want.module is not None:
            assert hb.module == want.module
    assert seen.left == [], "processes left after the kill"


@pytest.mark.parametrize("fault", HANGS)
def test_dump_shows_the_stuck_line(hung, fault: str) -> None:
    seen = hung[fault]
    for rank, want in EXPECTED[fault].items():
        dump, hb = seen.dumps[rank], seen.heartbeats[rank]
        line = worker.fault_line(want.marker)
        frames = [(os.path.realpath(f), n) for f, n, _ in dump.main]
        assert (WORKER, line) in frames, (rank, want.marker, dump.main)
        head = dump.header
        assert (int(head["rank"]), int(head["step"]), head["phase"]) == (rank, FAULT_STEP, want.phase)
        assert int(head["pid"]) == hb.pid
        stalled_at = hb.last_progress
        assert HANG_AFTER_S <= float(head["time"]) - stalled_at <= 60.0
        assert float(head["stalled_s"]) >= HANG_AFTER_S
        assert seen.dump_names[rank][0] == "stacks-0001.txt" == hb.dumps[0]


@pytest.mark.parametrize("fault", HANGS)
def test_collectives_tell_who_is_missing(hung, fault: str) -> None:
    """Rank 0 waits in the metric all-reduce (sequence number FAULT_STEP+1 of the metrics group);
    rank 1 never entered it (skip, loader, forward), or entered another op at that number (mismatch)."""
    pytest.importorskip("inspector.watchdog.collectives")
    seen = hung[fault]
    hb0, hb1 = seen.heartbeats[0], seen.heartbeats[1]
    assert hb0.collective is not None and hb0.collective.op == "all_reduce"
    assert hb0.collective.completed is None and hb0.collective.seq == FAULT_STEP + 1
    group = hb0.collective.group
    assert hb0.groups[group].entered == FAULT_STEP + 1 and hb0.groups[group].completed == FAULT_STEP
    assert hb0.groups[group].ranks == [0, 1]
    want1 = EXPECTED[fault][1]
    if fault == "mismatch":
        assert hb1.collective is not None
        assert (hb1.collective.group, hb1.collective.seq, hb1.collective.op) == (group, FAULT_STEP + 1, "broadcast")
    else:
        assert hb1.groups[group].entered == FAULT_STEP, "rank 1 should be missing from the metric all-reduce"
        if want1.op is not None:
            assert hb1.collective is not None and hb1.collective.op == want1.op
            assert hb1.collective.group != group
        else:
            assert hb1.collective is None


def test_sigkill_heartbeat_stops(tmp_path: Path) -> None:
    """Rank 1 SIGKILLs itself in backward at step 5 (steps paced at 0.4 s so heartbeats see them):
    its heartbeat is never closed and stops changing; its process is gone."""
    with start_job("sigkill", tmp_path / "run", step=FAULT_STEP, hang_after_s=HANG_AFTER_S,
                   extra_args=("--step-sleep", "0.4")) as job:
        job.wait_heartbeat(1, lambda hb: hb.step >= 2, START_S)
        code = job.wait_exit(60)
        last = job.heartbeat(1)
        time.sleep(3 * last.heartbeat_s)
        again = job.heartbeat(1)
    assert code != 0
    assert again.time == last.time and not again.closed
    assert 2 <= again.step <= FAULT_STEP
    with pytest.raises(ProcessLookupError):
        os.kill(again.pid, 0)
    assert not job.dumps(1)
    assert "SIGKILL" in job.log_tail(200)
    assert job.left() == []


def test_healthy_run_closes_without_dumps(tmp_path: Path) -> None:
    steps = 8
    with start_job("healthy", tmp_path / "run", steps=steps, hang_after_s=HANG_AFTER_S) as job:
        assert job.wait_exit(START_S) == 0, job.log_tail()
        for rank in (0, 1):
            hb = job.heartbeat(rank)
            assert hb is not None and hb.closed and hb.phase == "closed" and hb.step == steps
            assert hb.dumps == [] and job.dumps(rank) == []
    assert job.left() == []
