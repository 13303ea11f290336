"""Appending frames and blobs to one rank's directory. Used only from the Recorder's thread."""
from __future__ import annotations

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
    CLOSED_FILE,
    RANK_META_FILE,
    blob_name,
    encode_frame,
    rank_dir_name,
    segment_name,
)
from inspector.store.run_dir import write_json_atomic

BLOB_CODECS = ("none", "lz4", "zstd")


class RankWriter:
    """Owns the segment and blob files of one rank and appends to them.

    Every frame is one `os.write` on an `O_APPEND` descriptor: no user-space buffer to lose in a
    crash, and a reader in another process sees it at once.
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
        info = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        info.update(rank_info or {})
        write_json_atomic(self.dir / RANK_META_FILE, info)
        # A writer session never appends to an existing segment: after a crash its last frame may
        # be torn, and a stale length there would swallow the first new frame.
        self._seg_index, self._seg_fd, self._seg_size = self._open_next(segment_name)
        self._blob_index, self._blob_fd, self._blob_size = self._open_next(blob_name)

    def _open_next(self, namer) -> tuple[int, int, int]:
        index = 0
        while (self.dir / namer(index)).exists():
            index += 1
        if index and (self.dir / namer(index - 1)).stat().st_size == 0:
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
        steps = table.column("step")
        smin, smax = pa.compute.min_max(steps).values()
        frame = encode_frame(spec.id, spec.version, payload, smin.as_py(), smax.as_py())
        if self._seg_size and self._seg_size + len(frame) > self.segment_bytes:
            os.close(self._seg_fd)
            self._seg_index += 1
            self._seg_fd = os.open(self.dir / segment_name(self._seg_index),
                                   os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._seg_size = 0
        _write_all(self._seg_fd, frame)
        self._seg_size += len(frame)
        self.bytes_written += len(frame)
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
        self.bytes_written += len(data)
        return {"shape": list(raw.shape), "dtype": raw.dtype.str, "codec": self.blob_codec,
                "blob_file": self._blob_index, "offset": offset, "length": len(data),
                "crc32": zlib.crc32(data)}

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Close the files; with `summary`, also mark the rank as cleanly finished (closed.json)."""
        for fd in (self._seg_fd, self._blob_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        if summary is not None:
            write_json_atomic(self.dir / CLOSED_FILE, {"closed_at": time.time(), **summary})


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
