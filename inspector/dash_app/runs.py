"""The runs the dashboard serves: paths confined to one root, one LiveRun each, tailed by one thread.

A run is named in URLs by its path relative to the root (`?run=sub/dir`). A key is checked before
anything touches the filesystem (`key_problem`: at most 512 characters and 32 components, printable,
no backslash, not absolute, no `..`), so resolving it costs a bounded amount of work; then it must
resolve (symlinks followed) to a real path at or below the root, and a run whose `run.json` or
rank directories (or the files in them) are symlinks leading outside the root is refused. Every
refusal is a one-line message. Each run is opened
once and kept in a cache; a background thread calls `LiveRun.poll()` (which reads only what was
appended since the last poll) on the runs a page looked at recently. A directory that is not a run
yet is retried on every poll, so a run that appears later shows up by itself.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from inspector.store.discovery import find_runs
from inspector.store.errors import RunError
from inspector.store.errors import one_line
from inspector.store.format import RANK_PREFIX, RUN_META_FILE
from inspector.views.live import TABULAR_KINDS, LiveRun, open_live

MAX_KEY_CHARS = 512
MAX_KEY_PARTS = 32


def shown(key: str, limit: int = 60) -> str:
    """A key for a message: repr (one line), cut short."""
    return repr(key if len(key) <= limit else key[:limit] + "…")


def key_bounds_problem(key: object) -> str | None:
    """Why `key` is too big or malformed to be looked at (one line), or None: text, at most
    `MAX_KEY_CHARS` characters and `MAX_KEY_PARTS` components, printable. Cheap: no filesystem."""
    if not isinstance(key, str):
        return f"a run key must be text, not {type(key).__name__}"
    if len(key) > MAX_KEY_CHARS:
        return f"run {shown(key)} is too long ({len(key):,} characters; at most {MAX_KEY_CHARS})"
    if not key.isprintable():
        return f"run {shown(key)} contains control characters"
    parts = key.count("/") + 1
    if parts > MAX_KEY_PARTS:
        return f"run {shown(key)} has too many path components ({parts}; at most {MAX_KEY_PARTS})"
    return None


def key_problem(key: object) -> str | None:
    """Why `key` cannot name a run under the root (one line), or None: its bounds, then its shape
    (no backslash, not absolute, no `..`). No filesystem access."""
    problem = key_bounds_problem(key)
    if problem:
        return problem
    key = str(key).strip()
    if "\\" in key or key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        return f"run {shown(key)} is not a path under the dashboard's root"
    if ".." in key.split("/"):
        return f"run {shown(key)} is outside the dashboard's root"
    return None


def _inside(path: Path, root: Path) -> bool:
    """True when the resolved `path` is `root` or below it."""
    return path == root or path.is_relative_to(root)


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
        """The real directory for `key`, the root or below it (ValueError, one line, otherwise)."""
        key = "" if key is None else key
        problem = key_problem(key)
        if problem:
            raise ValueError(problem)
        key = key.strip()
        try:
            path = (self.root / key).resolve()
        except (OSError, RuntimeError) as exc:       # too long a name, a symlink loop, ...
            raise ValueError(f"run {shown(key)} cannot be resolved: {one_line(exc)}") from None
        if not _inside(path, self.root):
            raise ValueError(f"run {shown(key)} is outside the dashboard's root")
        return path

    def escaping_link(self, run_dir: Path) -> str | None:
        """The first of `run_dir`'s run.json, rank dirs and their files that is a symlink leading
        outside the root (relative to `run_dir`), or None."""
        for entry in _entries(run_dir):
            if entry.name != RUN_META_FILE and not entry.name.startswith(RANK_PREFIX):
                continue
            inner = [] if entry.is_symlink() else _entries(Path(entry.path))
            for item in [entry, *inner]:          # is_symlink() comes from the listing: no extra syscall
                if item.is_symlink() and not self._link_inside(Path(item.path)):
                    return Path(item.path).relative_to(run_dir).as_posix()
        return None

    def _link_inside(self, link: Path) -> bool:
        try:
            return _inside(link.resolve(), self.root)
        except (OSError, RuntimeError):
            return False

    def get(self, key: str | None) -> RunRef:
        """The run named `key` (the default run when None), opened once and cached."""
        if key is None:
            key = self.default_key()
            if key is None:
                return RunRef("", None, f"no runs under {self.root} yet (waiting for one to appear)")
        if not isinstance(key, str):
            return RunRef("", None, key_problem(key))
        try:
            path = self.resolve(key)
        except ValueError as exc:
            return RunRef(key[:MAX_KEY_CHARS], None, str(exc))
        with self._lock:
            self._seen[path] = time.monotonic()
            run = self._runs.get(path)
            if run is not None:
                return RunRef(key, run)
        run, message = self._open(path)
        return RunRef(key, run, message)

    def _open(self, path: Path) -> tuple[LiveRun | None, str | None]:
        label = path.relative_to(self.root).as_posix() if path != self.root else path.name
        try:
            exists = path.exists()
        except OSError as exc:
            return None, f"run {shown(label)} cannot be read: {one_line(exc)}"
        if not exists:
            return None, f"run {shown(label)} does not exist (yet); waiting for it to appear"
        link = self.escaping_link(path)
        if link is not None:
            return None, f"run {shown(label)} is refused: {link} is a symlink outside the dashboard's root"
        try:
            # every kind read at open, on the registry's thread: a kind first read during a page's
            # callbacks would change the run's version and redraw every panel of the page again
            run = open_live(path, kinds=TABULAR_KINDS)
        except RunError as exc:
            return None, str(exc).replace(str(path), label)
        except Exception as exc:    # a damaged run must never take the server down
            return None, f"run {label!r} cannot be read: {type(exc).__name__}: {exc}"
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


def _entries(path: Path) -> list[os.DirEntry]:
    """The entries of a directory (none when it cannot be listed)."""
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def _mtime(path: Path) -> float:
    try:
        return max((p.stat().st_mtime for p in path.iterdir()), default=path.stat().st_mtime)
    except OSError:
        return 0.0
