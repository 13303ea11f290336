"""Appending frames and blobs to one rank's directory. Used only from the Recorder's thread."""
from __future__ import annotations

import errno
import os
import socket
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from inspector.schema import KindSpec
from inspector.store.format import (
    BLOB_PREFIX,
    CLOSED_FILE,
    RANK_META_FILE,
    SEGMENT_PREFIX,
    blob_index,
    blob_name,
    encode_frame,
    rank_dir_name,
    segment_index,
    segment_name,
)
from inspector.store.rank_files import list_rank_files
from inspector.store.run_dir import read_json, write_json_atomic
from inspector.store.errors import CorruptRunError
from inspector.store.writer_state import WriterState

BLOB_CODECS = ("none", "lz4", "zstd")


class RankWriter:
    """Owns the segment and blob files of one rank and appends to them.

    Every frame is one `os.write` on an `O_APPEND` descriptor: no user-space buffer to lose in a
    crash, and a reader in another process sees it at once. Raises `RankInUseError` when another
    live process writes the same rank directory.
    """

    def __init__(self, run_dir: Path, rank: int, *, segment_bytes: int = 64 << 20,
                 blob_bytes: int = 1 << 30, blob_codec: str = "lz4",
                 rank_info: dict[str, Any] | None = None) -> None:
        if blob_codec not in BLOB_CODECS:
            raise ValueError(f"blob_codec must be one of {BLOB_CODECS}, not {blob_codec!r}")
        self.dir = Path(run_dir) / rank_dir_name(rank)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes, self.blob_bytes, self.blob_codec = segment_bytes, blob_bytes, blob_codec
        # lz4 at a negative level ("acceleration"): fp16 attention probabilities are ~half zeros
        # (causal mask) and half incompressible mantissas; level -16 stores +1% bytes for ~30% less
        # CPU. The LZ4 frame format is the same, so readers need no change.
        self._codec = None if blob_codec == "none" else pa.Codec(
            blob_codec, compression_level={"zstd": 1, "lz4": -16}[blob_codec])
        self.bytes_written = 0
        self.frames_written = 0
        info = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        info.update(rank_info or {})
        sessions = _previous_sessions(self.dir / RANK_META_FILE)
        self.session = len(sessions)
        self.state = WriterState(self.dir, {"rank": rank, "host": info["host"], "pid": info["pid"],
                                            "session": self.session})
        try:
            # A writer session never appends to an existing segment: after a crash its last frame
            # may be torn, and a stale length there would swallow the first new frame.
            self._seg_index, self._seg_fd, self._seg_size = self._open_next(segment_name)
            self._blob_index, self._blob_fd, self._blob_size = self._open_next(blob_name)
            # What earlier sessions left, checked again at close.
            left = list_rank_files(self.dir)
            self._sizes = {**{segment_name(i): n for i, n in left.segments.items()},
                           **{blob_name(i): n for i, n in left.blobs.items()}}
            self._first_segment, self._sealed_bytes = self._seg_index, 0
            sessions.append({"session": self.session, "first_segment": self._seg_index,
                             "first_blob": self._blob_index, "pid": info["pid"], "host": info["host"],
                             "started": info["started"]})
            write_json_atomic(self.dir / RANK_META_FILE, {**info, "session": self.session, "sessions": sessions})
        except OSError:
            self.state.close()
            raise

    def _open_next(self, namer) -> tuple[int, int, int]:
        # After the highest file there is, never into a hole: a hole is a lost file the reader reports.
        parse = segment_index if namer is segment_name else blob_index
        taken = [i for i in map(parse, os.listdir(self.dir)) if i is not None]
        index = max(taken) + 1 if taken else 0
        if index and os.lstat(self.dir / namer(index - 1)).st_size == 0:
            index -= 1
        fd = os.open(self.dir / namer(index), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return index, fd, os.fstat(fd).st_size

    def write_table(self, spec: KindSpec, table: pa.Table | pa.RecordBatch) -> int:
        """Append one frame holding `table` (of `spec`'s schema); returns the bytes written."""
        if table.num_rows == 0:
            return 0
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, spec.schema) as stream:
            stream.write(table)
        payload = sink.getvalue().to_pybytes()
        steps = table.column("step").to_numpy()     # not pyarrow.compute: ~40 us of Python a call
        frame = encode_frame(spec.id, spec.version, payload, int(steps.min()), int(steps.max()))
        if self._seg_size and self._seg_size + len(frame) > self.segment_bytes:
            self._sealed_bytes += self._seg_size
            os.close(self._seg_fd)
            self._seg_index += 1
            self._seg_fd = os.open(self.dir / segment_name(self._seg_index),
                                   os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._seg_size = 0
        _write_all(self._seg_fd, frame)
        self._seg_size += len(frame)
        self._sizes[segment_name(self._seg_index)] = self._seg_size
        self.bytes_written += len(frame)
        self.frames_written += 1
        return len(frame)

    def write_blob(self, array: np.ndarray) -> dict[str, Any]:
        """Append a tensor's bytes to the blob file; returns the blob-index columns for its row."""
        raw = np.ascontiguousarray(array)
        data = raw.reshape(-1).view(np.uint8) if self._codec is None else self._codec.compress(raw, asbytes=True)
        if self._blob_size and self._blob_size + len(data) > self.blob_bytes:
            os.close(self._blob_fd)
            self._blob_index += 1
            self._blob_fd = os.open(self.dir / blob_name(self._blob_index),
                                    os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._blob_size = 0
        offset = self._blob_size
        _write_all(self._blob_fd, data)
        self._blob_size += len(data)
        self._sizes[blob_name(self._blob_index)] = self._blob_size
        self.bytes_written += len(data)
        return {"shape": list(raw.shape), "dtype": raw.dtype.str, "codec": self.blob_codec,
                "blob_file": self._blob_index, "offset": offset, "length": len(data),
                "crc32": zlib.crc32(data)}

    def check_alive(self) -> None:
        """OSError when the files being written were deleted (the run directory removed mid-run):
        writes to an unlinked file succeed but reach nobody."""
        if os.fstat(self._seg_fd).st_nlink == 0:
            raise FileNotFoundError(errno.ENOENT, "the run directory was removed while recording",
                                    str(self.dir))

    def checkpoint(self) -> None:
        """Note in writer.json how far this session's files reach: a reader of a run that crashed
        later can tell a file cut short (records lost) from a crash (nothing more was written)."""
        self.state.update("writing", first_segment=self._first_segment, segment=self._seg_index,
                          sealed_bytes=self._sealed_bytes, segment_bytes=self._seg_size,
                          blob=self._blob_index, blob_bytes=self._blob_size, frames=self.frames_written)

    def fail(self, reason: str, **extra: Any) -> None:
        """Record in writer.json (in place: no new disk block) that writing stopped, and why."""
        try:
            self.state.update("failed", reason=reason, **extra)
        except OSError:
            pass

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Close the files; with `summary`, also mark the rank as closed (closed.json), with the
        size of every segment and blob file so a reader can tell when records went missing."""
        for fd in (self._seg_fd, self._blob_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            if summary is not None:
                sizes = {"segments": {k: v for k, v in sorted(self._sizes.items()) if k.startswith(SEGMENT_PREFIX)},
                         "blobs": {k: v for k, v in sorted(self._sizes.items()) if k.startswith(BLOB_PREFIX)}}
                try:
                    write_json_atomic(self.dir / CLOSED_FILE, {"closed_at": time.time(), "session": self.session,
                                                               **sizes, **summary})
                except OSError as exc:
                    self.fail(summary.get("failed") or f"closed.json could not be written ({exc})",
                              step=summary.get("last_step"), dropped=summary.get("dropped"))
                    raise
                if summary.get("failed"):
                    self.fail(summary["failed"], step=summary.get("last_step"), dropped=summary.get("dropped"))
                else:
                    self.state.update("closed")
        finally:
            self.state.close()


def _previous_sessions(path: Path) -> list[dict[str, Any]]:
    """The sessions an earlier rank.json lists (none when there is none, or it is unreadable)."""
    if not path.exists():
        return []
    try:
        sessions = read_json(path).get("sessions")
    except CorruptRunError:
        return []
    if isinstance(sessions, list) and all(isinstance(s, dict) for s in sessions):
        return sessions
    return [{"session": 0, "first_segment": 0, "first_blob": 0}]   # written before sessions were kept


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
