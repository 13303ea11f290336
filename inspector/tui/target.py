"""Which run `inspector tui RUN_OR_ROOT` shows."""
from __future__ import annotations

from pathlib import Path

from inspector.store.discovery import find_runs
from inspector.store.errors import RunError
from inspector.store.format import RUN_META_FILE


def resolve_target(path: str | Path) -> Path:
    """`path` if it is a run (or may become one); else the most recently updated run below it.

    A directory with no run in it is returned as is: the UI waits for a run to appear there.
    """
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: no such directory")
    if not path.is_dir():
        raise RunError(f"{path}: not a directory")
    if (path / RUN_META_FILE).exists():
        return path
    runs = find_runs(path)
    if not runs:
        return path
    return max(runs, key=lambda r: (r / RUN_META_FILE).stat().st_mtime)
