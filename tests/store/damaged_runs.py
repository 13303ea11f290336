"""Small real runs for the damage tests, and the ways a test damages a copy of one."""
from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from inspector.schema import HISTOGRAM, SCALAR
from inspector.store.format import HEADER_SIZE, decode_header, encode_frame
from inspector.store.recorder import Recorder

STEPS = 40


def record_run(run: Path, *, steps: int = STEPS, segment_bytes: int = 4096, close: bool = True,
               rank: int = 0, world_size: int = 1, maps: bool = True) -> Recorder:
    """A run of scalars and histograms every step (one flush per step: many frames, several segments)
    and an attention map every 10th step; closed unless `close` is False (then the open Recorder
    is returned, flushed)."""
    rec = Recorder(run, name="damage", rank=rank, world_size=world_size, segment_bytes=segment_bytes)
    for s in range(steps):
        rec.step = s
        rec.scalars({"loss": 10.0 - s, "lr": 1e-3})
        rec.histograms(["a"], np.arange(8)[None, :] + s, -1.0, 1.0, underflow=[0], overflow=[s])
        if maps and s % 10 == 0:
            rec.attention_map("attn.0", np.full((2, 4, 4), s / 100, np.float16), layer=0)
        rec.flush()
    if close:
        rec.close()
    return rec


def frames_of(segment: Path) -> list[tuple[int, int]]:
    """(offset, total length) of every frame of a healthy segment."""
    data, out, pos = segment.read_bytes(), [], 0
    while pos < len(data):
        head = decode_header(data, pos)
        assert head is not None, f"{segment} is not healthy at {pos}"
        out.append((pos, HEADER_SIZE + head.length))
        pos += HEADER_SIZE + head.length
    return out


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of `src` at `dst` (damage the copy, keep the original)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def lying_histogram_frame(step: int, huge_offset: int = 100_000_000) -> bytes:
    """A histogram frame whose checksums hold but whose list offsets point far past the values:
    `to_pylist()` on it reads out of bounds (SIGSEGV) unless the batch is validated first."""
    name = pa.DictionaryArray.from_arrays(pa.array([0, 0], pa.int32()), pa.array(["a"]))
    cols = [pa.array([step, step], pa.int64()), pa.array([0.0, 0.0]), name, pa.array([0.0, 0.0]),
            pa.array([1.0, 1.0]), pa.array([[7] * 5, [9] * 5], pa.list_(pa.int64())),
            pa.array([0, 0], pa.int64()), pa.array([0, 0], pa.int64())]
    payload = _ipc(pa.RecordBatch.from_arrays(cols, schema=HISTOGRAM.schema))
    needle = struct.pack("<3i", 0, 5, 10)
    assert payload.count(needle) == 1
    payload = payload.replace(needle, struct.pack("<3i", 0, 5, huge_offset))
    return encode_frame(HISTOGRAM.id, HISTOGRAM.version, payload, step, step)


def scalar_frame(step: int, *, schema: pa.Schema | None = None, version: int | None = None,
                 value: float = 1.0) -> bytes:
    """A valid-checksum scalar frame; `schema` other than the kind's makes it a foreign frame."""
    if schema is None:
        name = pa.DictionaryArray.from_arrays(pa.array([0], pa.int32()), pa.array(["injected"]))
        batch = pa.RecordBatch.from_arrays([pa.array([step]), pa.array([0.0]), name, pa.array([value])],
                                           schema=SCALAR.schema)
    else:
        batch = pa.RecordBatch.from_pydict({"step": [step], "other": ["x"]}, schema=schema)
    return encode_frame(SCALAR.id, SCALAR.version if version is None else version, _ipc(batch), step, step)


def _ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


def crc(data: bytes) -> int:
    """CRC-32 as the format uses it."""
    return zlib.crc32(data)
