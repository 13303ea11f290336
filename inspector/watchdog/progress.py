"""Where a rank is now: the in-memory state the phase hooks and the collective tracker update, and
the watchdog thread reads (`Progress`).

Writers are the training thread and autograd threads (hooks), readers the watchdog thread. Every
update is a few plain attribute assignments, no lock: a reader may see a phase from one update and
a module from the next, which a heartbeat written every second or two can live with.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from inspector.store.heartbeat_format import CollectiveRef


class Progress:
    """Step, phase and module of a rank, when the phase began and when the rank last made progress."""

    __slots__ = ("step", "phase", "module", "phase_since", "last_progress", "collective", "_outer_module",
                 "thread", "locate")

    def __init__(self, phase: str = "user") -> None:
        now = time.time()
        self.step = 0
        self.phase = phase
        self.module = ""
        self.phase_since = now
        self.last_progress = now
        self.collective: CollectiveRef | None = None
        self._outer_module = ""
        self.thread: int | None = None
        """The thread a driven forward runs on (`PhaseHooks.forward_begins`)."""
        self.locate: Callable[[int | None], str] | None = None
        """The watched module whose forward runs on a thread's stack ("" if none; the watchdog's
        fallback when no hook said which module the rank is in)."""

    def where(self) -> str:
        """The module the rank is in: the hooks' word, else during a forward the one on its stack."""
        module = self.module
        if module or self.phase != "forward" or self.locate is None:
            return module
        try:
            return self.locate(self.thread)
        except Exception:  # noqa: BLE001 - reading another thread's stack must never stop a heartbeat
            return ""

    def enter(self, phase: str, module: str = "") -> str:
        """Enter `phase` (in `module`); returns the phase it replaces, for `leave`."""
        previous = self.phase
        self._outer_module = self.module
        now = time.time()
        self.phase = phase
        self.module = module
        self.phase_since = now
        self.last_progress = now
        return previous

    def leave(self, previous: str) -> None:
        """Back to `previous` (what `enter` returned), in the module that was current before `enter`."""
        now = time.time()
        self.phase = previous
        self.module = self._outer_module
        self.phase_since = now
        self.last_progress = now

    def tick(self) -> None:
        """Progress without a change of phase."""
        self.last_progress = time.time()

    def set_phase(self, phase: str) -> None:
        """Switch to `phase` (no module) when it is not the current one; progress either way."""
        now = time.time()
        if self.phase != phase:
            self.phase = phase
            self.module = ""
            self.phase_since = now
        self.last_progress = now
