"""The on-disk format of a run directory, version 1.

```
RUN/
  run.json                 run metadata (schema.RunMeta), written once by rank 0 (temp + rename)
  rank-00000/              one directory per rank (RANK from torchrun; 0 otherwise)
    rank.json              rank, local rank, world size, host, pid, start time
    seg-000000.dsi         frames, appended; a new segment starts past `segment_bytes`
    blob-000000.bin        raw tensor bytes (attention maps), appended; indexed by frames
    writer.json            the writer's lock and state: pid, host, session, "writing" / "closed" /
                           "failed" (with why); preallocated, so a failure is recorded in place
                           even on a full disk
    closed.json            written by a clean close: last step, records, dropped records, and the
                           byte size of every segment and blob file, which the reader checks
```

Only one process writes a rank directory at a time: a writer holds an exclusive `flock` on
`writer.json` while it lives, and a second writer of the same rank is refused. Each writer
session starts a new segment (and blob file), so the segments a session wrote are known from
the `sessions` list in rank.json (`first_segment` of each), and records written again after a
crash and resume are told apart by session.

A segment is a sequence of *frames*. A frame is a 36-byte little-endian header followed by its
payload:

| offset | type    | field                                                        |
|--------|---------|--------------------------------------------------------------|
| 0      | 4 bytes | magic `DSIF`                                                 |
| 4      | u16     | kind schema version                                          |
| 6      | u16     | kind id (`schema.kind_id(name)`)                             |
| 8      | u32     | payload length in bytes                                      |
| 12     | u32     | CRC-32 of the payload                                        |
| 16     | i64     | smallest step in the payload                                 |
| 24     | i64     | largest step in the payload                                  |
| 32     | u32     | CRC-32 of bytes 0..31 (the header itself)                    |

The payload is one Arrow IPC *stream* (schema, one record batch, end marker) of the kind's
schema, so any Arrow reader can decode it without our code. A frame is written with a single
`write()` on a file opened `O_APPEND`, so a reader sees whole frames, or a torn last frame after a
crash (header or payload cut short): it is skipped with a warning. Garbage inside a segment fails
a CRC; the reader then searches forward for the next header whose CRC holds (resynchronises) and
reports how many bytes it skipped.

Blob kinds (attention maps) write the tensor bytes to the blob file *first* and then the index
row in a frame, which is therefore the commit marker: a blob without an index row is never seen.
Blob bytes are the tensor in C order, optionally compressed by the codec named in the row
("none", "lz4" or "zstd"), with a CRC-32 of the stored bytes in the row.
"""
from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

MAGIC = b"DSIF"
HEADER = struct.Struct("<4sHHIIqq")
HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = HEADER.size + HEADER_CRC.size  # 36
MAX_PAYLOAD = 1 << 30

SEGMENT_PREFIX, SEGMENT_SUFFIX = "seg-", ".dsi"
BLOB_PREFIX, BLOB_SUFFIX = "blob-", ".bin"
RANK_PREFIX = "rank-"
RUN_META_FILE, RANK_META_FILE, CLOSED_FILE = "run.json", "rank.json", "closed.json"
WRITER_FILE = "writer.json"
WRITER_FILE_BYTES = 1024
_SEGMENT_NAME = re.compile(re.escape(SEGMENT_PREFIX) + r"(\d{6,9})" + re.escape(SEGMENT_SUFFIX))
_BLOB_NAME = re.compile(re.escape(BLOB_PREFIX) + r"(\d{6,9})" + re.escape(BLOB_SUFFIX))


def segment_name(index: int) -> str:
    """File name of segment number `index`."""
    return f"{SEGMENT_PREFIX}{index:06d}{SEGMENT_SUFFIX}"


def blob_name(index: int) -> str:
    """File name of blob file number `index`."""
    return f"{BLOB_PREFIX}{index:06d}{BLOB_SUFFIX}"


def segment_index(name: str) -> int | None:
    """The number of a segment file name, or None when `name` is not one (e.g. "seg-000000 (copy).dsi")."""
    m = _SEGMENT_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def blob_index(name: str) -> int | None:
    """The number of a blob file name, or None when `name` is not one."""
    m = _BLOB_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def rank_dir_name(rank: int) -> str:
    """Directory name of a rank."""
    return f"{RANK_PREFIX}{rank:05d}"


@dataclass(frozen=True)
class FrameHeader:
    """A decoded frame header."""

    version: int
    kind_id: int
    length: int
    crc32: int
    step_min: int
    step_max: int


def encode_frame(kind_id: int, version: int, payload: bytes, step_min: int, step_max: int) -> bytes:
    """Header + payload, ready for one append."""
    head = HEADER.pack(MAGIC, version, kind_id, len(payload), zlib.crc32(payload), step_min, step_max)
    return head + HEADER_CRC.pack(zlib.crc32(head)) + payload


def decode_header(buf: bytes | memoryview, offset: int = 0) -> FrameHeader | None:
    """The header at `offset`, or None when the magic, the header CRC or the length is wrong."""
    if len(buf) - offset < HEADER_SIZE or bytes(buf[offset:offset + 4]) != MAGIC:
        return None
    (crc,) = HEADER_CRC.unpack_from(buf, offset + HEADER.size)
    if zlib.crc32(buf[offset:offset + HEADER.size]) != crc:
        return None
    _, version, kid, length, pcrc, smin, smax = HEADER.unpack_from(buf, offset)
    if length > MAX_PAYLOAD or smin > smax:
        return None
    return FrameHeader(version, kid, length, pcrc, smin, smax)
