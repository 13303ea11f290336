"""Scanning a segment file for frames: the reader's framing layer, with torn-tail and resync logic."""
from __future__ import annotations

import mmap
import os
import zlib
from dataclasses import dataclass, field

from inspector.store.format import HEADER_SIZE, MAGIC, FrameHeader, decode_header
from inspector.store.safe_io import open_regular


@dataclass(frozen=True)
class FrameRef:
    """Where one frame's payload lies, and what it holds."""

    rank: int
    segment: int
    offset: int          # of the payload
    header: FrameHeader


@dataclass
class ScanResult:
    """Frames found by one scan, where the next scan resumes, and what was skipped."""

    frames: list[FrameRef] = field(default_factory=list)
    resume_at: int = 0
    skipped: list[tuple[int, int]] = field(default_factory=list)   # (offset, bytes) of garbage
    pending_bytes: int = 0   # bytes after resume_at that do not form a whole frame (yet)


def scan_segment(path: str, rank: int, segment: int, start: int) -> ScanResult:
    """Read frame headers of `path` from byte `start` on; payloads are only read to resynchronise.

    An incomplete frame at the end is left for the next scan (`pending_bytes` says how large it
    is): a live writer may still be completing it, a dead one tore it. Bytes that do not start a
    valid header are skipped up to the next valid header, and reported. Only a regular file is
    read (OSError otherwise; a missing file is an empty scan).
    """
    result = ScanResult(resume_at=start)
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return result
    try:
        size = os.fstat(fd).st_size
        if size <= start:
            return result
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
            _scan(mm, size, rank, segment, start, result)
    finally:
        os.close(fd)
    return result


def _scan(mm: mmap.mmap, size: int, rank: int, segment: int, pos: int, out: ScanResult) -> None:
    while pos < size:
        head = decode_header(mm, pos) if size - pos >= HEADER_SIZE else None
        if head is not None:
            end = pos + HEADER_SIZE + head.length
            if end <= size and (end == size or decode_header(mm, end) is not None or _payload_ok(mm, pos, head)):
                out.frames.append(FrameRef(rank, segment, pos + HEADER_SIZE, head))
                pos = end
                continue
            # The payload is cut short (a frame in flight, or a torn tail), or bytes went missing
            # inside it: then a valid header lies within the length it claims, and the frame that
            # starts there is intact. Do not swallow it.
            inner = _next_header(mm, size, pos + HEADER_SIZE)
            if inner is None:
                break  # whole header, partial payload: pending or torn
            out.skipped.append((pos, inner - pos))
            pos = inner
            continue
        if size - pos < HEADER_SIZE and MAGIC.startswith(bytes(mm[pos:pos + 4])[: size - pos][:4]):
            break  # a header still being written (or torn)
        nxt = _next_header(mm, size, pos + 1)
        if nxt is None:
            # No valid header after this point; what remains may be the start of one in flight.
            magic_at = mm.find(MAGIC, pos + 1)
            if magic_at != -1 and size - magic_at < HEADER_SIZE:
                out.skipped.append((pos, magic_at - pos))
                pos = magic_at
            break
        out.skipped.append((pos, nxt - pos))
        pos = nxt
    out.resume_at = pos
    out.pending_bytes = size - pos


def _payload_ok(mm: mmap.mmap, pos: int, head: FrameHeader) -> bool:
    """Whether the payload of the frame at `pos` holds its checksum (read only when in doubt)."""
    start = pos + HEADER_SIZE
    with memoryview(mm) as view:
        return zlib.crc32(view[start:start + head.length]) == head.crc32


def _next_header(mm: mmap.mmap, size: int, pos: int) -> int | None:
    while True:
        at = mm.find(MAGIC, pos)
        if at == -1:
            return None
        if decode_header(mm, at) is not None:
            return at
        pos = at + 1
