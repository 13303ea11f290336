"""The watchdog thread on its own: heartbeat content, atomic rewrites, stall → dump → repeat →
recovery, a failing write or tracker that does not stop it, and `watch()`'s wiring."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import inspector
from inspector.store.heartbeat_format import HEARTBEAT_FILE, CollectiveRef, GroupState, Heartbeat
from inspector.watchdog import Progress, Watchdog
from tests.hangs.stacks import parse_dump

TIMEOUT_S = 60.0   # generous: only for conditions that must come true


def wait_until(predicate, timeout: float = TIMEOUT_S):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < end, "condition never came true"
        time.sleep(0.01)


class StubTracker:
    """Stands in for the collective tracker: a fixed snapshot (or an error)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.ref = CollectiveRef(group="default", op="all_reduce", seq=7, shapes=[[3, 4]], dtype="float32",
                                 entered=123.5)
        self.done = CollectiveRef(group="default", op="broadcast", seq=6, entered=120.0, completed=121.0)

    def snapshot(self):
        if self.fail:
            raise RuntimeError("tracker bug")
        return {"default": GroupState(entered=7, completed=6, ranks=[0, 1])}, [self.done, self.ref], self.ref


def read(rank_dir: Path) -> Heartbeat:
    return Heartbeat.from_json(json.loads((rank_dir / HEARTBEAT_FILE).read_text()))


def test_heartbeat_content(tmp_path: Path) -> None:
    p = Progress()
    p.step, p.phase, p.module = 12, "collective", "layers.3"
    p.phase_since, p.last_progress = 1000.0, 1001.0
    wd = Watchdog(tmp_path, p, StubTracker(), rank=3, world_size=8, heartbeat_s=0.5, hang_after_s=1e9)
    wd.write_heartbeat()
    raw = json.loads((tmp_path / HEARTBEAT_FILE).read_text())
    assert raw["rank"] == 3 and raw["world_size"] == 8 and raw["pid"] == os.getpid()
    assert (raw["step"], raw["phase"], raw["module"]) == (12, "collective", "layers.3")
    assert (raw["phase_since"], raw["last_progress"]) == (1000.0, 1001.0)
    assert raw["stalled_s"] == pytest.approx(raw["time"] - 1001.0)
    assert raw["collective"] == {"group": "default", "op": "all_reduce", "seq": 7, "shapes": [[3, 4]],
                                 "dtype": "float32", "entered": 123.5, "completed": None, "error": ""}
    assert raw["groups"] == {"default": {"entered": 7, "completed": 6, "ranks": [0, 1]}}
    assert [c["seq"] for c in raw["recent"]] == [6, 7]
    assert raw["hang_after_s"] == 1e9 and raw["heartbeat_s"] == 0.5
    assert raw["closed"] is False and raw["dumps"] == []


def test_rewrites_are_atomic(tmp_path: Path) -> None:
    """A reader polling while the thread rewrites every 2 ms only ever parses whole files."""
    p = Progress()
    wd = Watchdog(tmp_path, p, StubTracker(), rank=0, world_size=1, heartbeat_s=0.002, hang_after_s=1e9)
    wd.start()
    reads, torn = 0, []
    try:
        wait_until(lambda: (tmp_path / HEARTBEAT_FILE).exists())
        seen_times = set()
        while len(seen_times) < 50:
            text = (tmp_path / HEARTBEAT_FILE).read_text()
            try:
                seen_times.add(json.loads(text)["time"])
            except ValueError:
                torn.append(text)
            reads += 1
            p.step += 1
    finally:
        wd.stop()
    assert torn == [] and reads >= 50
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []
    final = read(tmp_path)
    assert final.closed and final.phase == "closed"


def test_stall_dumps_repeats_and_recovers(tmp_path: Path) -> None:
    """Driven beat by beat (no thread, no clock race): a stall dumps once, again after repeat_s,
    nothing while the rank progresses, and a new stall dumps again."""
    p = Progress()
    wd = Watchdog(tmp_path, p, None, rank=0, world_size=1, heartbeat_s=1.0, hang_after_s=20.0, repeat_s=60.0)
    wd._next_dump = 1
    p.last_progress = time.time() - 30        # stalled 30 s
    wd.beat()
    assert wd.dumps == ["stacks-0001.txt"]
    wd.beat()                                 # same stall, repeat not due
    assert wd.dumps == ["stacks-0001.txt"]
    wd._last_dump -= 61                       # a minute later
    wd.beat()
    assert wd.dumps == ["stacks-0001.txt", "stacks-0002.txt"]
    p.tick()                                  # progress: the stall is over
    wd.beat()
    assert len(wd.dumps) == 2
    p.last_progress = time.time() - 25        # a new stall
    wd.beat()
    assert wd.dumps == ["stacks-0001.txt", "stacks-0002.txt", "stacks-0003.txt"]
    assert read(tmp_path).dumps == wd.dumps
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("stacks-")) == wd.dumps


def test_dump_numbers_continue_after_an_earlier_session(tmp_path: Path) -> None:
    (tmp_path / "stacks-0004.txt").write_text("# rank: 0\n")
    wd = Watchdog(tmp_path, Progress(), None, rank=0, world_size=1, heartbeat_s=10, hang_after_s=1e9)
    wd.start()
    wd.stop()
    assert wd.dump() == "stacks-0005.txt"


def test_thread_dumps_a_real_stall(tmp_path: Path) -> None:
    """The thread itself: a main thread that stops making progress gets a dump, whose main-thread
    frames include the line it waits on."""
    p = Progress()
    wd = Watchdog(tmp_path, p, None, rank=0, world_size=1, heartbeat_s=0.05, hang_after_s=0.3)
    wd.start()
    try:
        gate = threading.Event()
        waiter = threading.Thread(target=lambda: (wait_until(lambda: wd.dumps), gate.set()), daemon=True)
        waiter.start()
        line = _stuck_here(gate)
    finally:
        wd.stop()
    dump = parse_dump(tmp_path / wd.dumps[0])
    assert (__file__, line) in [(f, n) for f, n, _ in dump.main]
    assert float(dump.header["stalled_s"]) >= 0.3


def _stuck_here(gate: threading.Event) -> int:
    """Block on `gate`; returns the line number of the wait."""
    gate.wait(TIMEOUT_S)  # stuck here
    return _stuck_here.__code__.co_firstlineno + 2


def test_failing_writes_do_not_stop_the_thread(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The rank directory disappears (a file takes its place): writes fail, said once; when it is
    back the thread writes again."""
    rank_dir = tmp_path / "rank"
    rank_dir.write_text("not a directory")
    wd = Watchdog(rank_dir, Progress(), None, rank=0, world_size=1, heartbeat_s=0.005, hang_after_s=1e9)
    with caplog.at_level(logging.WARNING, logger="inspector"):
        wd.start()
        try:
            wait_until(lambda: wd.errors >= 5)
            rank_dir.unlink()
            rank_dir.mkdir()
            wait_until(lambda: (rank_dir / HEARTBEAT_FILE).exists())
            assert wd.alive
        finally:
            wd.stop()
    warnings = [r for r in caplog.records if "watchdog" in r.getMessage()]
    assert len(warnings) == 1 and "said once" in warnings[0].getMessage()
    assert read(rank_dir).closed


def test_failing_tracker_still_heartbeats(tmp_path: Path) -> None:
    wd = Watchdog(tmp_path, Progress(), StubTracker(fail=True), rank=0, world_size=1, heartbeat_s=1, hang_after_s=1e9)
    wd.write_heartbeat()
    hb = read(tmp_path)
    assert hb.groups == {} and hb.collective is None and wd.errors == 1


def test_watch_runs_the_watchdog(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    w = inspector.watch(model, tmp_path, probes="none", hang_after_s=30, heartbeat_s=0.05)
    rank_dir = tmp_path / "rank-00000"
    try:
        model(torch.randn(2, 4)).sum().backward()
        w.step()
        hb = wait_until(lambda: (rank_dir / HEARTBEAT_FILE).exists() and read(rank_dir).step == 1 and read(rank_dir))
        assert hb.hang_after_s == 30 and hb.heartbeat_s == 0.05 and not hb.closed
        assert w.watchdog is not None and w.watchdog.alive
    finally:
        w.close()
    hb = read(rank_dir)
    assert hb.closed and hb.phase == "closed" and hb.step == 1
    assert not w.watchdog.alive


def test_watch_without_watchdog(tmp_path: Path) -> None:
    w = inspector.watch(nn.Linear(2, 2), tmp_path, probes="none", hang_after_s=None)
    w.close()
    assert w.watchdog is None
    assert not (tmp_path / "rank-00000" / HEARTBEAT_FILE).exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("inspector-watchdog")]
