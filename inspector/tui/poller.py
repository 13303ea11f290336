"""The poller: opens the run (waiting for it if needed), tails it, and builds snapshots.

`Poller.tick(request)` is called from the app's thread worker. It returns a new Snapshot only when
something the UI shows changed (new records, a new request, the header's clock, the hang verdict),
else None, so an idle UI does no work. The hang verdict (`views.hang`) is computed here, at each disk
poll, from the heartbeats; the Ranks banner and the hang view get it in their payloads.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from inspector.store.errors import RunError
from inspector.tui.build import builder
from inspector.tui.state import Request, Snapshot
from inspector.views.hang import HangVerdict, hang_verdict, verdict_signature
from inspector.views.live import LiveRun, RunNotReady, open_live
from inspector.views.overview import run_header


SELF_SCALARS = "inspector/"
"""Prefix of the scalars the Recorder writes about itself (queue depth, bytes written, drops)."""


class Poller:
    """Owns the LiveRun; `interval` is the minimum time between disk polls of a live run.

    New records rebuild the payload at most once per `rebuild_every` seconds (a new request at once).
    """

    def __init__(self, path: str | Path, *, interval: float = 0.5, clock: Callable[[], float] = time.time,
                 frozen_now: float | None = None, rebuild_every: float = 1.0) -> None:
        self.path = Path(path)
        self.interval = interval
        self.rebuild_every = rebuild_every
        self._last_build = 0.0
        self.clock = clock
        self.frozen_now = frozen_now
        self.run: LiveRun | None = None
        self._last_poll = 0.0
        self._last_header_t = 0.0
        self._last: Snapshot | None = None
        self._dirty = True
        self._serial = 0
        self._error: str | None = None
        self._scalar_rows = 0
        self.hang: HangVerdict | None = None
        self._hang_sig: tuple | None = None

    def _open(self) -> str | None:
        try:
            self.run = open_live(self.path)
        except RunNotReady:
            return f"waiting for a run in {self.path} (no run.json yet)"
        except RunError as exc:
            return f"cannot read {self.path}: {exc}"
        except OSError as exc:
            return f"cannot read {self.path}: {exc.strerror or exc}"
        self._last_poll = self.clock()
        self._scalar_rows = self.run.table("scalar").num_rows
        self._dirty = True
        self._check_hang(self.run)
        return None

    def tick(self, req: Request) -> Snapshot | None:
        """A new snapshot for `req`, or None when nothing on screen would change."""
        now = self.clock()
        if self.run is None:
            error = self._open()
            if error is not None:
                if error == self._error and self._last is not None and self._last.request == req:
                    return None
                self._error = error
                return self._emit(Snapshot(request=req, error=error))
        run = self.run
        assert run is not None
        status = self._last.status if self._last is not None and self._last.error is None else None
        if status != "finished" and now - self._last_poll >= self.interval:
            self._last_poll = now
            try:
                if self._worth_drawing(run, run.poll()):
                    self._dirty = True
                if self._check_hang(run):
                    self._dirty = True
            except (RunError, OSError) as exc:
                return self._emit(Snapshot(request=req, error=f"cannot read {self.path}: {exc}"))
        header_due = status != "finished" and now - self._last_header_t >= 1.0
        new_request = self._last is None or self._last.request != req or self._last.error is not None
        data_due = self._dirty and now - self._last_build >= self.rebuild_every
        if not (new_request or data_due or header_due):
            return None
        return self._emit(self._snapshot(run, req, rebuild=new_request or data_due))

    def _check_hang(self, run: LiveRun) -> bool:
        """Recompute the hang verdict; True when what it says changed (not just its stall times)."""
        try:
            verdict = hang_verdict(run, self.frozen_now if self.frozen_now is not None else self.clock())
        except Exception:  # a damaged heartbeat must not take the UI down
            verdict = None
        self.hang = verdict
        sig = verdict_signature(verdict)
        changed, self._hang_sig = sig != self._hang_sig, sig
        return changed

    def _worth_drawing(self, run: LiveRun, changed: set[str]) -> bool:
        """False when the only new rows are the Recorder's own periodic scalars ("inspector/...")."""
        if "scalar" in changed:
            table = run.table("scalar")
            new, self._scalar_rows = table.slice(self._scalar_rows), table.num_rows
            if changed == {"scalar"}:
                names = pc.cast(new.column("name"), pa.string())
                return not pc.all(pc.starts_with(names, SELF_SCALARS)).as_py()
        return bool(changed)

    def _snapshot(self, run: LiveRun, req: Request, *, rebuild: bool) -> Snapshot:
        self._last_header_t = self.clock()
        try:
            head = run_header(run, now=self.frozen_now)
            if self.frozen_now is not None:
                head.elapsed_s = 0.0
            header, status = head.line(), head.status
        except Exception as exc:  # a damaged record must not take the UI down
            header, status = f"{run.meta.name} · header unavailable ({type(exc).__name__}: {exc})", run.status()
        snap = Snapshot(request=req, header=header, status=status, last_step=run.last_step(), ranks=run.ranks(),
                        data_problems=run.problems())
        if status == "finished" and self._dirty:
            rebuild = True         # a finished run is not polled again: its last picture must be complete
        if not rebuild and self._last is not None:
            snap.payload, snap.problem = self._last.payload, self._last.problem
            return snap
        self._dirty = False
        self._last_build = self.clock()
        try:
            snap.payload = builder(req.screen, hang=self.hang)(run, req, snap.cursor_step)
        except Exception as exc:
            snap.problem = f"cannot draw {req.screen}: {type(exc).__name__}: {exc}"
        return snap

    def _emit(self, snap: Snapshot) -> Snapshot:
        self._serial += 1
        snap.serial = self._serial
        self._last = snap
        return snap

    def close(self) -> None:
        """Release the run's files."""
        if self.run is not None:
            self.run.close()
