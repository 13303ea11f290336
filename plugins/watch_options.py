"""What the framework callbacks (Hugging Face, Lightning) share: the options they hand to `watch()`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


class WatchOptions:
    """Holds `run_dir` (None: the framework's own output directory), `probes`, `every` and any other
    `inspector.watch` keyword arguments, and the `Watch` once training has started."""

    def __init__(self, run_dir: str | Path | None = None, *, probes: str | Sequence[str] = "default",
                 every: int | Mapping[str, int] | None = None, **watch_options: Any) -> None:
        self.run_dir = run_dir
        self.probes = probes
        self.every = every
        self.watch_options = watch_options
        self.watch: Any = None

    def close_watch(self) -> None:
        """Remove every hook and close the run (once)."""
        if self.watch is not None:
            self.watch.close()
            self.watch = None
