"""LiveRun: one run as the UIs see it, tailed incrementally (live) or read once (replay).

`poll()` asks the reader only for frames appended since the last poll (cursors over the store's
byte offsets) and appends them to per-kind Arrow tables; a UI's background thread calls it, and
rendering works from the tables it already has, never waiting on disk.
"""
from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, TypeVar

import pandas as pd
import pyarrow as pa

from inspector.schema import ATTENTION_MAP
from inspector.store.heartbeat_format import Heartbeat
from inspector.store.heartbeat_read import HeartbeatCache, StackDump, list_stack_dumps, read_stack_dump
from inspector.store.errors import RunError
from inspector.store.reader import Cursor, RunReader, RunWarning
from inspector.store.format import RUN_META_FILE

T = TypeVar("T")

TABULAR_KINDS = ("scalar", "timing", "grad_stats", "histogram", "activation_stats", "attention_stats",
                 "expert_load", "system", "anomaly", "expert_load_inference", "inference_iteration",
                 "inference_request")
"""Kinds tailed by default (attention maps are fetched one at a time, by step)."""


class RunNotReady(RunError):
    """The directory exists (or may appear) but holds no readable run yet."""


class LiveRun:
    """A run whose tabular records are tailed into memory; thread-safe.

    A kind is tailed from the first time it is asked for (`table`, `frame`, or a `cached` result
    that depends on it), then by every `poll()`; `kinds` are tailed from the start. Opening reads
    nothing else: a 1,024-rank run has 12 kinds × 1,024 ranks of tails, and a screen needs a few
    kinds (the TUI's Ranks screen: timing, scalars, system; measured 1.3 s to read every kind
    at open). `version(kind)` grows each time new rows of that kind arrive, so callers can cache
    what they derived from a table.
    """

    def __init__(self, path: str | Path, *, kinds: tuple[str, ...] = (),
                 stale_after: float = 20.0) -> None:
        self.path = Path(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunWarning)
            self.reader = RunReader(self.path, stale_after=stale_after)
        self._lock = threading.RLock()
        self._cursors: dict[str, Cursor] = {k: self.reader.cursor(k) for k in kinds}
        self._parts: dict[str, list[pa.Table]] = {k: [] for k in kinds}
        self._tables: dict[str, pa.Table | None] = {}
        self._frames: dict[str, pd.DataFrame] = {}
        self._versions: dict[str, int] = {k: 0 for k in kinds}
        self._cache: OrderedDict[tuple[Any, ...], tuple[int, Any]] = OrderedDict()
        self._beats = HeartbeatCache(self.path)
        self._beats_read_at = float("-inf")
        self._dumps: dict[str, tuple[tuple[int, int], StackDump]] = {}
        if kinds:
            self.poll()          # the reader scanned the run just now: nothing to refresh without kinds

    @property
    def meta(self):
        """The run's metadata (`RunMeta`)."""
        return self.reader.meta

    def poll(self) -> set[str]:
        """Read what was appended since the last poll; returns the kinds that got new rows."""
        changed: set[str] = set()
        with self._lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", RunWarning)
            self.reader.refresh()
            for kind, cursor in self._cursors.items():
                new = self.reader.read_new(cursor, refresh=False)
                if new.num_rows:
                    self._parts[kind].append(new)
                    self._tables.pop(kind, None)
                    self._frames.pop(kind, None)
                    self._versions[kind] += 1
                    changed.add(kind)
        return changed

    def version(self, kind: str) -> int:
        """A number that changes whenever rows of `kind` were added."""
        return self._versions.get(kind, 0)

    def _tail(self, kind: str) -> None:
        """Start tailing `kind` unless it is tailed already: read what is there so far (call with
        the lock held)."""
        if kind in self._cursors:
            return
        cursor = self._cursors[kind] = self.reader.cursor(kind)
        self._parts[kind], self._versions[kind] = [], 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunWarning)
            new = self.reader.read_new(cursor, refresh=False)
        if new.num_rows:
            self._parts[kind].append(new)

    def table(self, kind: str) -> pa.Table:
        """Every row of `kind` read so far, all ranks (with a `rank` column).

        A kind not tailed yet (a plugin's) is tailed from now on, by every later `poll()`.
        """
        with self._lock:
            self._tail(kind)
            table = self._tables.get(kind)
            if table is None:
                parts = self._parts.get(kind, [])
                if parts:
                    try:
                        table = pa.concat_tables(parts)
                    except pa.ArrowInvalid:
                        table = pa.concat_tables(parts, promote_options="permissive")
                    self._parts[kind] = [table]
                else:
                    table = self.reader.read_table(kind, steps=(0, -1))   # an empty table of the right schema
                self._tables[kind] = table
            return table

    def frame(self, kind: str) -> pd.DataFrame:
        """`table(kind)` as a pandas DataFrame (cached until new rows arrive). Treat it as read-only."""
        with self._lock:
            df = self._frames.get(kind)
            if df is None:
                df = self.table(kind).to_pandas()
                for col in ("name", "phase"):
                    if col in df and isinstance(df[col].dtype, pd.CategoricalDtype):
                        df[col] = df[col].astype(str)
                self._frames[kind] = df
            return df

    CACHE_SIZE = 512
    """Most derived results kept (least recently used ones are dropped first)."""

    def cached(self, key: tuple[Any, ...], kinds: tuple[str, ...], compute: Callable[[], T]) -> T:
        """`compute()`, memoised under `key` until any of `kinds` gets new rows (`()`: never stale)."""
        with self._lock:
            for k in kinds:
                self._tail(k)
        stamp = sum(self.version(k) for k in kinds)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == stamp:
                self._cache.move_to_end(key)
                return hit[1]
        value = compute()
        with self._lock:
            self._cache[key] = (stamp, value)
            self._cache.move_to_end(key)
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return value

    def status(self) -> str:
        """The run's status, one of `inspector.store.reader.RUN_STATUSES`."""
        return self.reader.status()

    def problems(self) -> list[str]:
        """Damage and loss the reader found so far (one line each), oldest first."""
        return list(self.reader.problems)

    def last_step(self) -> int:
        """Largest step any rank recorded (-1 when none)."""
        return self.reader.last_step()

    def ranks(self) -> list[int]:
        """Ranks that have written anything."""
        return self.reader.ranks

    def attention_steps(self, rank: int = 0) -> list[int]:
        """Steps at which `rank` stored attention maps."""
        with self._lock:
            return self.reader.blob_steps(ATTENTION_MAP.name, rank) if rank in self.reader.ranks else []

    HEARTBEAT_KIND = "heartbeat"
    """The pseudo-kind whose `version()` grows when a heartbeat file changed (for `cached`)."""

    HEARTBEAT_POLL_S = 0.5
    """Heartbeat files are stat'ed at most this often (watchdogs rewrite them every 1–2 s)."""

    def heartbeats(self, *, refresh: bool = True) -> dict[int, Heartbeat]:
        """{rank: its last readable heartbeat}; with `refresh`, re-read the files that changed (at
        most every `HEARTBEAT_POLL_S`). A run without a watchdog gives {}."""
        import time

        with self._lock:
            now = time.monotonic()
            if refresh and now - self._beats_read_at >= self.HEARTBEAT_POLL_S:
                self._beats_read_at = now
                if self._beats.refresh():
                    self._versions[self.HEARTBEAT_KIND] = self._beats.version
            return self._beats.heartbeats()

    def heartbeat_mtimes(self) -> dict[int, float]:
        """{rank: mtime of its heartbeat file} as of the last refresh (the file system's clock)."""
        with self._lock:
            return self._beats.mtimes()

    def heartbeat_problems(self) -> list[str]:
        """One line per heartbeat file that was torn or corrupt at the last refresh."""
        with self._lock:
            return self._beats.problems()

    def stack_dump_files(self, rank: int) -> list[Path]:
        """The stack dump files of `rank`, oldest first."""
        return list_stack_dumps(self.path, rank)

    def stack_dump(self, rank: int, name: str | None = None) -> StackDump | None:
        """Stack dump `name` of `rank` (None: its newest), parsed and cached until the file changes;
        None when there is none or it cannot be read."""
        import os

        from inspector.store.format import rank_dir_name

        if name is not None:
            path = self.path / rank_dir_name(rank) / os.path.basename(name)
        else:
            files = self.stack_dump_files(rank)
            if not files:
                return None
            path = files[-1]
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._dumps.get(str(path))
            if hit is not None and hit[0] == stamp:
                return hit[1]
        try:
            dump = read_stack_dump(path)
        except OSError:
            return None
        with self._lock:
            if len(self._dumps) >= self.CACHE_SIZE:
                self._dumps.clear()
            self._dumps[str(path)] = (stamp, dump)
        return dump

    def close(self) -> None:
        """Release the reader's files."""
        self.reader.close()


def open_live(path: str | Path, **kwargs: Any) -> LiveRun:
    """A LiveRun over `path`; RunNotReady when there is no run.json there (yet)."""
    path = Path(path)
    if not (path / RUN_META_FILE).exists():
        raise RunNotReady(f"{path}: no run here yet (no {RUN_META_FILE})")
    return LiveRun(path, **kwargs)
