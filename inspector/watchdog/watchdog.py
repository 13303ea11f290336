"""The watchdog thread of a recording process: a heartbeat file every `heartbeat_s`, stack dumps when
the rank made no progress for `hang_after_s` (file format: `inspector.store.heartbeat_format`).

The thread only reads `Progress` (plain attributes the hooks write) and asks the collective tracker
for a snapshot; it takes no lock the training thread takes, and all its file I/O happens here, so it
never blocks training. A stall (no progress for `hang_after_s`) writes a dump at once and another
every `repeat_s` while it lasts; progress ends the stall, and a later stall dumps again. An error in
a beat (a full disk, a tracker bug) is logged once and the thread goes on.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from inspector.store.heartbeat_format import HEARTBEAT_FILE, RECENT_COLLECTIVES, CollectiveRef, GroupState, Heartbeat
from inspector.store.run_dir import write_json_atomic
from inspector.watchdog.progress import Progress
from inspector.watchdog.stack_dump import next_dump_number, write_stack_dump

log = logging.getLogger("inspector")


class Snapshotter(Protocol):
    """What the watchdog needs of a collective tracker."""

    def snapshot(self) -> tuple[dict[str, GroupState], list[CollectiveRef], CollectiveRef | None]:
        """Groups, recent collectives (oldest first), the collective the rank is inside now."""


class Watchdog:
    """A daemon thread that writes `heartbeat.json` and, on a stall, `stacks-NNNN.txt` into `rank_dir`."""

    def __init__(self, rank_dir: Path, progress: Progress, tracker: Snapshotter | None, *, rank: int,
                 world_size: int, heartbeat_s: float = 2.0, hang_after_s: float = 20.0,
                 repeat_s: float = 60.0) -> None:
        self.rank_dir = Path(rank_dir)
        self.progress = progress
        self.tracker = tracker
        self.rank = rank
        self.world_size = world_size
        self.heartbeat_s = float(heartbeat_s)
        self.hang_after_s = float(hang_after_s)
        self.repeat_s = float(repeat_s)
        self.started = time.time()
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.dumps: list[str] = []
        self.errors = 0
        self._next_dump = 0
        self._stall_of: float | None = None   # `last_progress` of the stall being dumped
        self._last_dump = 0.0
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._warned = False
        self._thread = threading.Thread(target=self._run, name=f"inspector-watchdog-{rank}", daemon=True)

    def start(self) -> None:
        """Start the thread (its first heartbeat is written at once)."""
        self._next_dump = next_dump_number(self.rank_dir)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, then write the final heartbeat (closed, phase "closed")."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.progress.set_phase("closed")
        self._guarded(lambda: self.write_heartbeat(closed=True))

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._guarded(self.beat)
            if self._stop.wait(self.heartbeat_s):
                return

    def _guarded(self, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the watchdog must outlive a full disk or a tracker bug
            self._note(exc)

    def _note(self, exc: Exception) -> None:
        """Count an error; log the first one."""
        self.errors += 1
        if not self._warned:
            self._warned = True
            log.warning("inspector: rank %d: watchdog: %s: %s (said once; it goes on)", self.rank,
                        type(exc).__name__, exc)

    def beat(self) -> None:
        """One heartbeat: a stack dump first when the rank is stalled and one is due, then heartbeat.json."""
        now = time.time()
        last = self.progress.last_progress
        if now - last >= self.hang_after_s:
            if self._stall_of != last or now - self._last_dump >= self.repeat_s:
                self._stall_of, self._last_dump = last, now
                self.dump(now)
        else:
            self._stall_of = None
        self.write_heartbeat()

    def _collectives(self) -> tuple[dict[str, GroupState], list[CollectiveRef], CollectiveRef | None]:
        if self.tracker is None:
            return {}, [], self.progress.collective
        try:
            groups, recent, current = self.tracker.snapshot()
        except Exception as exc:  # noqa: BLE001 - a heartbeat without collectives beats none
            self._note(exc)
            return {}, [], self.progress.collective
        return groups, list(recent)[-RECENT_COLLECTIVES:], current

    def heartbeat(self, closed: bool = False) -> Heartbeat:
        """The heartbeat as of now."""
        p = self.progress
        groups, recent, current = self._collectives()
        return Heartbeat(rank=self.rank, world_size=self.world_size, pid=self.pid, host=self.host,
                         time=time.time(), started=self.started, heartbeat_s=self.heartbeat_s,
                         hang_after_s=self.hang_after_s, step=p.step, phase=p.phase, module=p.where(),
                         phase_since=p.phase_since, last_progress=p.last_progress, collective=current,
                         groups=groups, recent=recent, dumps=list(self.dumps), closed=closed)

    def write_heartbeat(self, closed: bool = False) -> None:
        """Rewrite heartbeat.json atomically (from any thread)."""
        with self._write_lock:
            write_json_atomic(self.rank_dir / HEARTBEAT_FILE, self.heartbeat(closed).to_json())

    def write_now(self) -> None:
        """Write the heartbeat now, off the schedule (a collective just failed); never raises."""
        self._guarded(self.write_heartbeat)

    def dump(self, now: float | None = None) -> str:
        """Write the next stack dump; returns its file name."""
        now = time.time() if now is None else now
        p = self.progress
        _, _, current = self._collectives()
        name = write_stack_dump(self.rank_dir, self._next_dump, {
            "rank": self.rank, "world_size": self.world_size, "pid": self.pid, "host": self.host, "time": now,
            "step": p.step, "phase": p.phase, "module": p.where(), "stalled_s": round(now - p.last_progress, 3),
            "collective": None if current is None else current.to_json()})
        self._next_dump += 1
        self.dumps.append(name)
        return name
