"""RunReader: the one read API between the run store and every view, live or replay.

It keeps a directory of frames (from their headers only) that `refresh()` extends by scanning
each rank's segments from the byte offset where the last scan stopped, so tailing a live run reads
only what is new. Payloads are read and CRC-checked when a query needs them; a query touches only
frames whose step range overlaps the steps asked for.
"""
from __future__ import annotations

import os
import time
import warnings
import zlib
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inspector.schema import ATTENTION_MAP, RunMeta, get_kind, kind_for_id, kind_id
from inspector.store.format import (
    BLOB_PREFIX,
    CLOSED_FILE,
    RANK_META_FILE,
    SEGMENT_PREFIX,
    SEGMENT_SUFFIX,
    blob_name,
    segment_name,
)
from inspector.store.run_dir import load_run_meta, rank_dirs, read_json
from inspector.store.errors import CorruptRunError, RunError
from inspector.store.scan import FrameRef, scan_segment

Steps = int | tuple[int | None, int | None] | None


class RunWarning(UserWarning):
    """Something in a run was damaged and skipped; the rest stays readable."""


@dataclass
class _Rank:
    rank: int
    path: Path
    frames: list[FrameRef] = field(default_factory=list)
    by_kind: dict[int, list[FrameRef]] = field(default_factory=dict)
    resume: dict[int, int] = field(default_factory=dict)        # segment -> byte offset to scan from
    pending: int = 0                                             # bytes of an incomplete last frame
    pending_at: tuple[int, int] = (0, 0)                         # (segment, offset) of that frame
    last_step: int = -1


@dataclass
class Cursor:
    """Position of a tailing reader: frames of one kind already returned, per rank."""

    kind: str
    seen: dict[int, int] = field(default_factory=dict)


@dataclass
class _BlobIndex:
    tables: list[pa.Table] = field(default_factory=list)
    by_step: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    frames_seen: int = 0


class RunReader:
    """Read one run directory: metadata, status, tables of any kind, blobs, live tailing.

    `stale_after` is how long (seconds) a rank may go without a new byte before a run that was
    not closed cleanly counts as crashed; writers heartbeat every 2 s by default.
    """

    def __init__(self, path: str | Path, *, stale_after: float = 20.0) -> None:
        self.path = Path(path)
        self.meta: RunMeta = load_run_meta(self.path)
        self.stale_after = stale_after
        self.problems: list[str] = []
        self._warned: set[str] = set()
        self._ranks: dict[int, _Rank] = {}
        self._fds: dict[tuple[int, str], int] = {}
        self._blob_index: dict[tuple[int, int], _BlobIndex] = {}
        self.refresh()

    # ---- discovery and tailing -----------------------------------------------------------------

    def refresh(self) -> int:
        """Pick up new ranks, segments and frames; returns how many frames were new."""
        new = 0
        for rank, path in rank_dirs(self.path):
            st = self._ranks.get(rank)
            if st is None:
                st = self._ranks[rank] = _Rank(rank, path)
            new += self._scan_rank(st)
        self._report_torn_tails()
        return new

    def _scan_rank(self, st: _Rank) -> int:
        segs = sorted(int(p.name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)])
                      for p in st.path.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"))
        new = 0
        for seg in segs:
            res = scan_segment(str(st.path / segment_name(seg)), st.rank, seg, st.resume.get(seg, 0))
            for off, n in res.skipped:
                self._problem(f"skip:{st.rank}:{seg}:{off}",
                              f"rank {st.rank}: skipped {n} unreadable bytes at {segment_name(seg)}+{off}")
            for ref in res.frames:
                st.frames.append(ref)
                st.by_kind.setdefault(ref.header.kind_id, []).append(ref)
                st.last_step = max(st.last_step, ref.header.step_max)
            new += len(res.frames)
            st.resume[seg] = res.resume_at
            if seg == segs[-1]:
                st.pending, st.pending_at = res.pending_bytes, (seg, res.resume_at)
            elif res.pending_bytes:
                self._problem(f"torn:{st.rank}:{seg}:{res.resume_at}",
                              f"rank {st.rank}: torn record of {res.pending_bytes} bytes at "
                              f"{segment_name(seg)}+{res.resume_at} skipped")
        return new

    def _report_torn_tails(self) -> None:
        for st in self._ranks.values():
            if st.pending and self.rank_status(st.rank) != "live":
                seg, off = st.pending_at
                self._problem(f"torn:{st.rank}:{seg}:{off}",
                              f"rank {st.rank}: torn last record ({st.pending} bytes at {segment_name(seg)}+{off}) "
                              "skipped; everything before it is intact")

    def _problem(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        self.problems.append(message)
        warnings.warn(f"{self.path}: {message}", RunWarning, stacklevel=3)

    # ---- what is there -------------------------------------------------------------------------

    @property
    def ranks(self) -> list[int]:
        """Ranks that have a directory, sorted."""
        return sorted(self._ranks)

    def rank_info(self, rank: int) -> dict[str, Any]:
        """rank.json of a rank (empty if unreadable)."""
        try:
            return read_json(self._ranks[rank].path / RANK_META_FILE)
        except (KeyError, CorruptRunError):
            return {}

    def closed_info(self, rank: int) -> dict[str, Any] | None:
        """closed.json of a rank, or None while it has not closed cleanly."""
        path = self._ranks[rank].path / CLOSED_FILE
        if not path.exists():
            return None
        try:
            return read_json(path)
        except CorruptRunError:
            return None

    def last_step(self, rank: int | None = None) -> int:
        """Largest step recorded by `rank` (or by any rank); -1 when nothing is recorded."""
        if rank is not None:
            return self._ranks[rank].last_step if rank in self._ranks else -1
        return max((st.last_step for st in self._ranks.values()), default=-1)

    def last_update(self, rank: int) -> float:
        """Modification time of the newest file of a rank (seconds since the epoch)."""
        newest = 0.0
        try:
            for entry in os.scandir(self._ranks[rank].path):
                if entry.name.startswith((SEGMENT_PREFIX, BLOB_PREFIX)) or entry.name == RANK_META_FILE:
                    newest = max(newest, entry.stat().st_mtime)
        except OSError:
            pass
        return newest

    def rank_status(self, rank: int, now: float | None = None) -> str:
        """'finished' (closed cleanly), 'live' (wrote recently) or 'crashed'."""
        if self.closed_info(rank) is not None:
            return "finished"
        now = time.time() if now is None else now
        return "live" if now - self.last_update(rank) <= self.stale_after else "crashed"

    def status(self) -> str:
        """Run status: 'finished', 'live', 'crashed' or 'empty' (no rank has written yet)."""
        if not self._ranks:
            age = time.time() - (self.path / "run.json").stat().st_mtime
            return "empty" if age <= self.stale_after else "crashed"
        states = [self.rank_status(r) for r in self._ranks]
        if all(s == "finished" for s in states) and len(states) >= self.meta.world_size:
            return "finished"
        if any(s == "live" for s in states):
            return "live"
        return "crashed" if any(s == "crashed" for s in states) else "live"

    def kinds(self) -> dict[str, dict[str, Any]]:
        """Per kind present: frame count and step range, from frame headers only (no payload read)."""
        out: dict[str, dict[str, Any]] = {}
        for st in self._ranks.values():
            for kid, refs in st.by_kind.items():
                spec = kind_for_id(kid)
                name = spec.name if spec else f"unknown-{kid}"
                d = out.setdefault(name, {"frames": 0, "step_min": None, "step_max": None})
                d["frames"] += len(refs)
                lo, hi = min(r.header.step_min for r in refs), max(r.header.step_max for r in refs)
                d["step_min"] = lo if d["step_min"] is None else min(d["step_min"], lo)
                d["step_max"] = hi if d["step_max"] is None else max(d["step_max"], hi)
        return out

    def size_bytes(self) -> int:
        """Bytes on disk of the whole run directory."""
        total = 0
        for root, _, files in os.walk(self.path):
            for f in files:
                try:
                    total += os.stat(os.path.join(root, f)).st_size
                except OSError:
                    pass
        return total

    # ---- tables --------------------------------------------------------------------------------

    def read_table(self, kind: str, *, steps: Steps = None, ranks: Iterable[int] | None = None,
                   names: Sequence[str] | None = None, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows of `kind` with a `rank` column, limited to a step range, ranks and names.

        `steps` is one step or an inclusive (first, last) range where either end may be None.
        """
        lo, hi = _step_bounds(steps)
        kid = kind_id(kind)
        parts: list[pa.Table] = []
        for rank in self._select_ranks(ranks):
            refs = [r for r in self._ranks[rank].by_kind.get(kid, ())
                    if r.header.step_max >= lo and r.header.step_min <= hi]
            parts.extend(self._decode_many(refs, rank, lo, hi, names, columns))
        return self._concat(kind, parts, columns)

    def to_pandas(self, kind: str, *, steps: Steps = None, ranks: Iterable[int] | None = None,
                  names: Sequence[str] | None = None, columns: Sequence[str] | None = None):
        """`read_table(...)` as a pandas DataFrame (dictionary columns become categoricals)."""
        return self.read_table(kind, steps=steps, ranks=ranks, names=names, columns=columns).to_pandas()

    def cursor(self, kind: str, *, at_end: bool = False) -> Cursor:
        """A tailing cursor for `kind`: at the start of the run, or past what is there now."""
        kid = kind_id(kind)
        seen = {r: len(st.by_kind.get(kid, ())) for r, st in self._ranks.items()} if at_end else {}
        return Cursor(kind, seen)

    def read_new(self, cursor: Cursor, *, refresh: bool = True, names: Sequence[str] | None = None,
                 columns: Sequence[str] | None = None) -> pa.Table:
        """Rows of the cursor's kind appended since the cursor last moved; advances the cursor."""
        if refresh:
            self.refresh()
        kid = kind_id(cursor.kind)
        parts: list[pa.Table] = []
        for rank, st in sorted(self._ranks.items()):
            refs = st.by_kind.get(kid, [])
            start = cursor.seen.get(rank, 0)
            parts.extend(self._decode_many(refs[start:], rank, None, None, names, columns))
            cursor.seen[rank] = len(refs)
        return self._concat(cursor.kind, parts, columns)

    def _select_ranks(self, ranks: Iterable[int] | None) -> list[int]:
        return self.ranks if ranks is None else [r for r in ranks if r in self._ranks]

    def _decode_many(self, refs: Sequence[FrameRef], rank: int, lo: int | None, hi: int | None,
                     names: Sequence[str] | None, columns: Sequence[str] | None) -> list[pa.Table]:
        out = []
        name_set = pa.array(list(names), type=pa.string()) if names is not None else None
        for ref in refs:
            table = self._decode(ref)
            if table is None:
                continue
            mask = None
            if lo is not None and (ref.header.step_min < lo or ref.header.step_max > hi):
                step = table.column("step")
                mask = pc.and_(pc.greater_equal(step, lo), pc.less_equal(step, hi))
            if name_set is not None and "name" in table.column_names:
                col = table.column("name")
                if pa.types.is_dictionary(col.type):
                    col = col.cast(pa.string())
                m = pc.is_in(col, value_set=name_set)
                mask = m if mask is None else pc.and_(mask, m)
            if mask is not None:
                table = table.filter(mask)
            if columns is not None:
                table = table.select([c for c in columns if c in table.column_names])
            if table.num_rows:
                out.append(table)
        if not out:
            return out
        # One rank column per rank, not one per frame (~20 us a frame; a run has 10,000s of frames).
        try:
            table = pa.concat_tables(out) if len(out) > 1 else out[0]
        except pa.ArrowInvalid:
            table = pa.concat_tables(out, promote_options="permissive")
        return [table.append_column("rank", pa.array(np.full(table.num_rows, rank, np.int32)))]

    def _concat(self, kind: str, parts: list[pa.Table], columns: Sequence[str] | None) -> pa.Table:
        if parts:
            try:
                return pa.concat_tables(parts)
            except pa.ArrowInvalid:
                return pa.concat_tables(parts, promote_options="permissive")
        try:
            schema = get_kind(kind).schema
        except KeyError:
            return pa.table({"step": pa.array([], pa.int64()), "rank": pa.array([], pa.int32())})
        table = schema.empty_table().append_column("rank", pa.array([], pa.int32()))
        return table.select([c for c in columns if c in table.column_names]) if columns else table

    def _decode(self, ref: FrameRef) -> pa.Table | None:
        data = self._pread(ref.rank, segment_name(ref.segment), ref.offset, ref.header.length)
        if data is None or len(data) != ref.header.length or zlib.crc32(data) != ref.header.crc32:
            self._problem(f"crc:{ref.rank}:{ref.segment}:{ref.offset}",
                          f"rank {ref.rank}: record at {segment_name(ref.segment)}+{ref.offset} fails its "
                          "checksum and was skipped")
            return None
        try:
            return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            self._problem(f"ipc:{ref.rank}:{ref.segment}:{ref.offset}",
                          f"rank {ref.rank}: undecodable record at {segment_name(ref.segment)}+{ref.offset} "
                          f"skipped ({exc})")
            return None

    def _pread(self, rank: int, fname: str, offset: int, length: int) -> bytes | None:
        key = (rank, fname)
        fd = self._fds.get(key)
        if fd is None:
            try:
                fd = self._fds[key] = os.open(self._ranks[rank].path / fname, os.O_RDONLY)
            except OSError:
                return None
        return os.pread(fd, length, offset)

    # ---- blobs (attention maps) ----------------------------------------------------------------

    def blob_steps(self, kind: str = ATTENTION_MAP.name, rank: int = 0) -> list[int]:
        """Sorted steps at which `rank` stored blobs of `kind`."""
        return sorted(self._index(kind, rank).by_step)

    def blob_rows(self, kind: str = ATTENTION_MAP.name, *, step: int, rank: int = 0) -> list[dict[str, Any]]:
        """Index rows of the blobs of `kind` stored at `step` by `rank` (no tensor bytes read)."""
        idx = self._index(kind, rank)
        return [idx.tables[t].slice(r, 1).to_pylist()[0] for t, r in idx.by_step.get(step, [])]

    def fetch(self, kind: str = ATTENTION_MAP.name, *, step: int, rank: int = 0,
              **match: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """The tensor of `kind` at `step` whose index row matches `match` (e.g. layer=3), with its row.

        One dictionary lookup, one read and one decompression: no scan of the run.
        """
        idx = self._index(kind, rank)
        for t, r in idx.by_step.get(step, []):
            table = idx.tables[t]
            # Check the match on the columns first: materialising every row of the step as a dict
            # (24 maps per step) cost ~1 ms per fetch, more than reading the blob.
            if any(k in table.column_names and table.column(k)[r].as_py() != v for k, v in match.items()):
                continue
            row = table.slice(r, 1).to_pylist()[0]
            if all(row.get(k) == v for k, v in match.items()):
                return self._read_blob(rank, row), row
        raise KeyError(f"no {kind} at step {step} on rank {rank} matching {match or 'anything'}")

    def attention_map(self, *, step: int, layer: int, rank: int = 0) -> np.ndarray:
        """Attention probabilities [heads, rows, keys] (float16) of `layer` at `step`."""
        return self.fetch(ATTENTION_MAP.name, step=step, rank=rank, layer=layer)[0]

    def _index(self, kind: str, rank: int) -> _BlobIndex:
        kid = kind_id(kind)
        idx = self._blob_index.setdefault((rank, kid), _BlobIndex())
        refs = self._ranks[rank].by_kind.get(kid, []) if rank in self._ranks else []
        for ref in refs[idx.frames_seen:]:
            table = self._decode(ref)
            if table is None:
                continue
            t = len(idx.tables)
            idx.tables.append(table)
            for r, step in enumerate(table.column("step").to_numpy()):
                idx.by_step.setdefault(int(step), []).append((t, r))
        idx.frames_seen = len(refs)
        return idx

    def _read_blob(self, rank: int, row: dict[str, Any]) -> np.ndarray:
        data = self._pread(rank, blob_name(row["blob_file"]), row["offset"], row["length"])
        if data is None or len(data) != row["length"] or zlib.crc32(data) != row["crc32"]:
            raise CorruptRunError(f"{self.path}: rank {rank}: blob at {blob_name(row['blob_file'])}+{row['offset']} "
                                  "is damaged (checksum mismatch)")
        dtype = np.dtype(row["dtype"])
        shape = tuple(row["shape"])
        if row["codec"] != "none":
            data = pa.Codec(row["codec"]).decompress(data, decompressed_size=prod(shape) * dtype.itemsize,
                                                     asbytes=True)
        return np.frombuffer(data, dtype=dtype).reshape(shape)

    def close(self) -> None:
        """Close cached file descriptors."""
        fds = getattr(self, "_fds", {})
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        fds.clear()

    def __enter__(self) -> "RunReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _step_bounds(steps: Steps) -> tuple[int, int]:
    if steps is None:
        return -(1 << 62), 1 << 62
    if isinstance(steps, (int, np.integer)):
        return int(steps), int(steps)
    lo, hi = steps
    return (-(1 << 62) if lo is None else int(lo)), ((1 << 62) if hi is None else int(hi))


def open_run(path: str | Path, *, stale_after: float = 20.0) -> RunReader:
    """Open a run directory for reading (raises a RunError subclass with a one-line message)."""
    return RunReader(path, stale_after=stale_after)


__all__ = ["Cursor", "RunError", "RunReader", "RunWarning", "open_run"]
