"""Frame encoding and segment scanning on real files: torn tails, garbage, resynchronisation."""
from __future__ import annotations

from pathlib import Path

from inspector.store.format import HEADER_SIZE, decode_header, encode_frame
from inspector.store.scan import scan_segment


def _frames(n: int) -> list[bytes]:
    return [encode_frame(7, 1, bytes([i]) * (10 + i), i, i + 1) for i in range(n)]


def test_header_roundtrip_and_header_crc() -> None:
    frame = encode_frame(123, 2, b"payload", -5, 9)
    h = decode_header(frame)
    assert (h.kind_id, h.version, h.length, h.step_min, h.step_max) == (123, 2, 7, -5, 9)
    broken = bytearray(frame)
    broken[10] ^= 0xFF  # inside the length field
    assert decode_header(bytes(broken)) is None


def test_scan_finds_all_frames_and_resumes(tmp_path: Path) -> None:
    seg = tmp_path / "seg-000000.dsi"
    frames = _frames(5)
    seg.write_bytes(b"".join(frames[:3]))
    first = scan_segment(str(seg), 0, 0, 0)
    assert [r.header.step_min for r in first.frames] == [0, 1, 2]
    assert first.pending_bytes == 0 and not first.skipped
    with seg.open("ab") as f:
        f.write(b"".join(frames[3:]))
    second = scan_segment(str(seg), 0, 0, first.resume_at)
    assert [r.header.step_min for r in second.frames] == [3, 4]  # nothing read twice


def test_torn_last_frame_is_pending_not_skipped(tmp_path: Path) -> None:
    seg = tmp_path / "seg-000000.dsi"
    frames = _frames(3)
    seg.write_bytes(frames[0] + frames[1] + frames[2][: HEADER_SIZE + 3])
    res = scan_segment(str(seg), 0, 0, 0)
    assert len(res.frames) == 2
    assert res.pending_bytes == HEADER_SIZE + 3
    # a partial header is pending too
    seg.write_bytes(frames[0] + frames[1][:10])
    res = scan_segment(str(seg), 0, 0, 0)
    assert len(res.frames) == 1 and res.pending_bytes == 10


def test_garbage_in_the_middle_is_skipped_and_reported(tmp_path: Path) -> None:
    seg = tmp_path / "seg-000000.dsi"
    frames = _frames(4)
    garbage = b"\x00garbage-DSIF-not-a-header\xff" * 3
    seg.write_bytes(frames[0] + frames[1] + garbage + frames[2] + frames[3])
    res = scan_segment(str(seg), 0, 0, 0)
    assert [r.header.step_min for r in res.frames] == [0, 1, 2, 3]
    assert res.skipped == [(len(frames[0]) + len(frames[1]), len(garbage))]
    assert res.pending_bytes == 0
