"""The run store: per-rank, append-only, segmented and checksummed run directories.

Write side: `Recorder` (and `RankWriter` under it). Read side: `RunReader` / `open_run`, the one
read API every view and UI goes through. The format is documented in `inspector.store.format`.
The names below are imported on first use: `inspector.store.run_dir` and the other small modules
load without numpy or pyarrow (the roll call of the TUI's first frame, `inspector.views.roll_call`).
"""
from inspector.lazy_exports import lazy_getattr

_EXPORTS = {
    "CorruptRunError": ("inspector.store.errors", "CorruptRunError"),
    "RunError": ("inspector.store.errors", "RunError"),
    "RunNotFoundError": ("inspector.store.errors", "RunNotFoundError"),
    "UnsupportedFormatError": ("inspector.store.errors", "UnsupportedFormatError"),
    "Cursor": ("inspector.store.reader", "Cursor"),
    "RunReader": ("inspector.store.reader", "RunReader"),
    "RunWarning": ("inspector.store.reader", "RunWarning"),
    "open_run": ("inspector.store.reader", "open_run"),
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
