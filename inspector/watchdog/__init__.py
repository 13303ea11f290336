"""The watchdog of a recording process: where the rank is (`Progress`, kept by `PhaseHooks` and the
collective tracker) and a thread that writes it down (`Watchdog`: heartbeat.json, stack dumps on a
stall). `inspector.watch()` starts it; the file format is `inspector.store.heartbeat_format`.
"""
from __future__ import annotations

from inspector.watchdog.phase_hooks import PhaseHooks
from inspector.watchdog.progress import Progress
from inspector.watchdog.watchdog import Watchdog

__all__ = ["PhaseHooks", "Progress", "Watchdog"]
