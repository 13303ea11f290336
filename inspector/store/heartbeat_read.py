"""Reading the watchdog's files of a run (see `heartbeat_format`): heartbeats and stack dumps.

Nothing here raises on a damaged file: a torn or corrupt `heartbeat.json` is skipped with a one-line
problem, so a UI polling a hung job never fails on what a killed process left half-written.
`HeartbeatCache` re-reads only the files whose size or mtime changed since its last scan, so
polling 1,024 ranks costs one `stat` per rank when nothing moved.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from inspector.store.errors import CorruptRunError, one_line
from inspector.store.heartbeat_format import (HEARTBEAT_FILE, STACKS_PREFIX, STACKS_SUFFIX, CollectiveRef,
                                              Heartbeat)
from inspector.store.format import rank_dir_name
from inspector.store.run_dir import read_json, scan_rank_dirs
from inspector.store.safe_io import read_regular

MAX_DUMP_BYTES = 4 << 20
"""A stack dump of a process with many threads is tens of KB; anything larger is cut."""

_THREAD = re.compile(r"^(Current thread|Thread) (0x[0-9a-fA-F]+)(.*?)\(most recent call first\):\s*$")
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+|\?\?\?) in (.*?)\s*$')
_HEADER = re.compile(r"^#\s*([A-Za-z_]+)\s*:\s?(.*)$")
_DUMP_NAME = re.compile(re.escape(STACKS_PREFIX) + r"(\d+)" + re.escape(STACKS_SUFFIX))


@dataclass(frozen=True)
class StackFrame:
    """One Python frame of a stack dump."""

    file: str
    line: int          # 0 when faulthandler printed "???"
    function: str

    @property
    def where(self) -> str:
        """"name.py:57" (the file's base name and the line)."""
        return f"{os.path.basename(self.file)}:{self.line}"


@dataclass
class ThreadStack:
    """One thread of a dump: its id as faulthandler prints it, and its frames, most recent first."""

    id: str
    current: bool = False      # the thread that wrote the dump (the watchdog's, normally)
    main: bool = False         # the process's main thread (header `main_thread`)
    frames: list[StackFrame] = field(default_factory=list)


@dataclass
class StackDump:
    """A parsed `stacks-NNNN.txt`: its `# key: value` header and its threads."""

    header: dict[str, str] = field(default_factory=dict)
    threads: list[ThreadStack] = field(default_factory=list)

    @property
    def main_thread(self) -> ThreadStack | None:
        """The main thread (the training loop), or else the first thread that is not the writer."""
        for thread in self.threads:
            if thread.main:
                return thread
        others = [t for t in self.threads if not t.current]
        return others[0] if others else (self.threads[0] if self.threads else None)

    @property
    def collective(self) -> CollectiveRef | None:
        """The collective named in the header (None when absent or unreadable)."""
        import json

        try:
            data = json.loads(self.header.get("collective", "null"))
            return CollectiveRef.from_json(data) if isinstance(data, dict) else None
        except (ValueError, TypeError, KeyError):
            return None


def _same_thread_id(a: str, b: str) -> bool:
    try:
        return int(a, 16) == int(b, 16)
    except ValueError:
        return a.lower() == b.lower()


def parse_stack_dump(text: str) -> StackDump:
    """Parse a stack dump: header lines, then `faulthandler.dump_traceback(all_threads=True)` output.

    Tolerant: unknown lines are skipped; a dump cut short keeps the frames read so far.
    """
    dump = StackDump()
    thread: ThreadStack | None = None
    for line in text.splitlines():
        if thread is None and (m := _HEADER.match(line)):
            dump.header[m.group(1)] = m.group(2).strip()
            continue
        if m := _THREAD.match(line):
            thread = ThreadStack(id=m.group(2), current=m.group(1) == "Current thread")
            dump.threads.append(thread)
            continue
        if thread is not None and (m := _FRAME.match(line)):
            lineno = m.group(2)
            thread.frames.append(StackFrame(m.group(1), int(lineno) if lineno.isdigit() else 0, m.group(3)))
    main_id = dump.header.get("main_thread", "")
    if main_id:
        for t in dump.threads:
            t.main = _same_thread_id(t.id, main_id)
    return dump


def _heartbeat_path(rank_dir: Path) -> Path:
    return rank_dir / HEARTBEAT_FILE


def read_heartbeat(path: Path) -> Heartbeat:
    """One heartbeat file; CorruptRunError with a one-line reason when torn, corrupt or malformed."""
    data = read_json(path)
    try:
        return Heartbeat.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptRunError(f"{path}: not a heartbeat ({type(exc).__name__}: {one_line(exc)})") from None


def read_heartbeats(run_dir: str | Path, problems: list[str] | None = None) -> dict[int, Heartbeat]:
    """{rank: Heartbeat} of every rank directory that has a readable `heartbeat.json`.

    A missing file is skipped silently (a rank without a watchdog, or not started yet); a torn or
    corrupt one is skipped and described in one line appended to `problems` (when given).
    """
    out: dict[int, Heartbeat] = {}
    for rank, rank_dir in scan_rank_dirs(Path(run_dir))[0]:
        path = _heartbeat_path(rank_dir)
        try:
            out[rank] = read_heartbeat(path)
        except CorruptRunError as exc:
            if os.path.lexists(path) and problems is not None:
                problems.append(f"rank {rank}: heartbeat unreadable: {one_line(exc)}")
    return out


def list_stack_dumps(run_dir: str | Path, rank: int) -> list[Path]:
    """The stack dump files of `rank`, oldest first (by their counter)."""
    rank_dir = Path(run_dir) / rank_dir_name(rank)
    try:
        names = [(int(m.group(1)), e.path) for e in os.scandir(rank_dir)
                 if (m := _DUMP_NAME.fullmatch(e.name)) and e.is_file(follow_symlinks=False)]
    except OSError:
        return []
    return [Path(p) for _, p in sorted(names)]


def read_stack_dump(path: str | Path) -> StackDump:
    """Parse one dump file (at most `MAX_DUMP_BYTES` of it); OSError when unreadable."""
    return parse_stack_dump(_read_capped(Path(path)).decode("utf-8", errors="replace"))


def _read_capped(path: Path) -> bytes:
    try:
        return read_regular(path, MAX_DUMP_BYTES)
    except ValueError:   # larger than the cap: the head holds the header and the main thread
        with open(path, "rb") as f:
            return f.read(MAX_DUMP_BYTES)


@dataclass
class _Entry:
    stamp: tuple[int, int]        # (mtime_ns, size)
    heartbeat: Heartbeat | None
    problem: str | None
    mtime: float


class HeartbeatCache:
    """The heartbeats of a run, re-read only where a file changed (by mtime and size).

    `refresh()` returns True when anything changed; `version` grows with each change, so derived
    results (the hang verdict) can be cached on it.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._entries: dict[int, _Entry] = {}
        self._dirs: list[tuple[int, Path]] = []
        self._dirs_seen: tuple[int, int] | None = None
        self.version = 0

    def _rank_dirs(self) -> list[tuple[int, Path]]:
        try:
            st = os.stat(self.run_dir)
            stamp = (st.st_mtime_ns, st.st_nlink)
        except OSError:
            return []
        if stamp != self._dirs_seen:        # a rank directory was added or removed
            self._dirs, self._dirs_seen = scan_rank_dirs(self.run_dir)[0], stamp
        return self._dirs

    def refresh(self) -> bool:
        """Stat every rank's heartbeat file and re-read the changed ones; True when any changed."""
        changed = False
        seen = set()
        for rank, rank_dir in self._rank_dirs():
            path = _heartbeat_path(rank_dir)
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            seen.add(rank)
            stamp = (st.st_mtime_ns, st.st_size)
            old = self._entries.get(rank)
            if old is not None and old.stamp == stamp:
                continue
            try:
                entry = _Entry(stamp, read_heartbeat(path), None, st.st_mtime)
            except CorruptRunError as exc:
                entry = _Entry(stamp, old.heartbeat if old else None,
                               f"rank {rank}: heartbeat unreadable: {one_line(exc)}", st.st_mtime)
            self._entries[rank] = entry
            changed = True
        for rank in set(self._entries) - seen:
            del self._entries[rank]
            changed = True
        if changed:
            self.version += 1
        return changed

    def heartbeats(self) -> dict[int, Heartbeat]:
        """{rank: the last readable heartbeat} (a torn rewrite keeps the previous one)."""
        return {r: e.heartbeat for r, e in sorted(self._entries.items()) if e.heartbeat is not None}

    def mtimes(self) -> dict[int, float]:
        """{rank: mtime of its heartbeat file} (epoch seconds, the file system's clock)."""
        return {r: e.mtime for r, e in self._entries.items()}

    def problems(self) -> list[str]:
        """One line per heartbeat file that could not be read at the last refresh."""
        return [e.problem for _, e in sorted(self._entries.items()) if e.problem]
