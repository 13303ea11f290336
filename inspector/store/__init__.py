"""The run store: per-rank, append-only, segmented and checksummed run directories.

Write side: `Recorder` (and `RankWriter` under it). Read side: `RunReader` / `open_run`, the one
read API every view and UI goes through. The format is documented in `inspector.store.format`.
"""
from inspector.store.errors import CorruptRunError, RunError, RunNotFoundError, UnsupportedFormatError
from inspector.store.reader import Cursor, RunReader, RunWarning, open_run

__all__ = [
    "CorruptRunError",
    "Cursor",
    "RunError",
    "RunNotFoundError",
    "RunReader",
    "RunWarning",
    "UnsupportedFormatError",
    "open_run",
]
