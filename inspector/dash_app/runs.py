"""The runs the dashboard serves: paths confined to one root, one LiveRun each, tailed by one thread.

A run is named in URLs by its path relative to the root (`?run=sub/dir`). Anything that resolves
outside the root (`..`, absolute paths, symlinks out) is refused with a message. Each run is opened
once and kept in a cache; a background thread calls `LiveRun.poll()` (which reads only what was
appended since the last poll) on the runs a page looked at recently. A directory that is not a run
yet is retried on every poll, so a run that appears later shows up by itself.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from inspector.store.discovery import find_runs
from inspector.store.errors import RunError
from inspector.views.live import LiveRun, open_live


@dataclass
class RunRef:
    """A run as a page asks for it: its URL key and either the open run or why there is none."""

    key: str
    run: LiveRun | None
    message: str | None = None


class RunRegistry:
    """Resolves `?run=` keys under `root`, keeps one LiveRun per run and polls them in the background."""

    def __init__(self, root_or_run: str | Path, *, poll_s: float = 0.5, keep_polling_s: float = 120.0,
                 start: bool = True) -> None:
        self.root = Path(root_or_run).resolve()
        self.poll_s = poll_s
        self.keep_polling_s = keep_polling_s
        self._lock = threading.Lock()
        self._runs: dict[Path, LiveRun] = {}
        self._errors: dict[Path, str] = {}
        self._seen: dict[Path, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="inspector-dash-poll", daemon=True)
        if start:
            self._thread.start()

    def run_keys(self) -> list[str]:
        """Keys of the runs under the root ("" when the root is itself a run)."""
        if not self.root.is_dir():
            return []
        return [self.key_of(p) for p in find_runs(self.root)]

    def default_key(self) -> str | None:
        """The run a page shows when the URL names none: the root itself, or the newest run under it."""
        keys = self.run_keys()
        if not keys:
            return None
        if "" in keys:
            return ""
        return max(keys, key=lambda k: _mtime(self.root / k))

    def key_of(self, path: Path) -> str:
        """The URL key of a path under the root."""
        rel = Path(path).resolve().relative_to(self.root)
        return "" if rel == Path(".") else rel.as_posix()

    def resolve(self, key: str | None) -> Path:
        """The directory for `key`, which must stay under the root (ValueError otherwise)."""
        key = (key or "").strip()
        if "\x00" in key or key.startswith(("/", "\\")) or (len(key) > 1 and key[1] == ":"):
            raise ValueError(f"run {key!r} is not a path under the dashboard's root")
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"run {key!r} is outside the dashboard's root")
        return path

    def get(self, key: str | None) -> RunRef:
        """The run named `key` (the default run when None), opened once and cached."""
        if key is None:
            key = self.default_key()
            if key is None:
                return RunRef("", None, f"no runs under {self.root} yet (waiting for one to appear)")
        try:
            path = self.resolve(key)
        except ValueError as exc:
            return RunRef(key, None, str(exc))
        with self._lock:
            self._seen[path] = time.monotonic()
            run = self._runs.get(path)
            if run is not None:
                return RunRef(key, run)
        run, message = self._open(path)
        return RunRef(key, run, message)

    def _open(self, path: Path) -> tuple[LiveRun | None, str | None]:
        shown = path.relative_to(self.root).as_posix() if path != self.root else path.name
        if not path.exists():
            return None, f"run {shown!r} does not exist (yet); waiting for it to appear"
        try:
            run = open_live(path)
        except RunError as exc:
            return None, str(exc).replace(str(path), shown)
        except Exception as exc:    # a damaged run must never take the server down
            return None, f"run {shown!r} cannot be read: {type(exc).__name__}: {exc}"
        with self._lock:
            other = self._runs.setdefault(path, run)
        if other is not run:
            run.close()
        return other, None

    def poll_once(self) -> None:
        """Read what was appended to the runs a page asked for recently."""
        now = time.monotonic()
        with self._lock:
            runs = [r for p, r in self._runs.items() if now - self._seen.get(p, 0.0) < self.keep_polling_s]
        for run in runs:
            try:
                run.poll()
            except Exception:   # a torn frame while the writer is mid-append: next poll reads it
                pass

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll_once()

    def close(self) -> None:
        """Stop polling and close every run."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with self._lock:
            runs, self._runs = list(self._runs.values()), {}
        for run in runs:
            run.close()


def _mtime(path: Path) -> float:
    try:
        return max((p.stat().st_mtime for p in path.iterdir()), default=path.stat().st_mtime)
    except OSError:
        return 0.0
