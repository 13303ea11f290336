"""Finding runs under a root directory (for `inspector ls`, the dashboard and the TUI)."""
from __future__ import annotations

import os
from pathlib import Path

from inspector.store.run_dir import is_run_dir


def find_runs(root: str | Path, *, max_depth: int = 4) -> list[Path]:
    """Run directories at or below `root` (not descending into a run), sorted by path."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    found: list[Path] = []

    def walk(path: Path, depth: int) -> None:
        if depth > max_depth:
            return
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                sub = Path(entry.path)
                if is_run_dir(sub):
                    found.append(sub)
                else:
                    walk(sub, depth + 1)

    walk(root, 1)
    return found
