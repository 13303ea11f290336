"""Telling lost records from a run that simply stopped: one rank's files against what its writer
said it wrote (closed.json at a clean close, the writer.json checkpoint while writing).

Each check returns one-line descriptions of what is missing; an empty list means nothing is.
"""
from __future__ import annotations

from typing import Any

from inspector.store.format import blob_index, blob_name, segment_index, segment_name
from inspector.store.rank_files import RankFiles


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def written_sizes(closed: dict[str, Any], key: str, parse) -> dict[int, int] | None:
    """{file number: bytes} from closed.json's `segments` or `blobs`; None when absent or malformed."""
    table = closed.get(key)
    if not isinstance(table, dict):
        return None
    out = {}
    for name, size in table.items():
        index, size = parse(name) if isinstance(name, str) else None, _int(size)
        if index is None or size is None:
            return None
        out[index] = size
    return out


def closed_losses(files: RankFiles, closed: dict[str, Any]) -> list[str]:
    """Files missing or shorter than closed.json says they were written."""
    out = []
    for key, parse, namer, present in (("segments", segment_index, segment_name, files.segments),
                                       ("blobs", blob_index, blob_name, files.blobs)):
        sizes = written_sizes(closed, key, parse)
        if sizes is None:
            continue
        for index, size in sorted(sizes.items()):
            have = present.get(index)
            if have is None and size:
                out.append(f"{namer(index)} is missing ({size:,} bytes of records lost)")
            elif have is not None and have < size:
                out.append(f"{namer(index)} was cut short: {have:,} of {size:,} bytes left, records lost")
    return out


def checkpoint_losses(files: RankFiles, writer: dict[str, Any]) -> list[str]:
    """Files shorter than the writer's last checkpoint in writer.json said they were."""
    first, seg, sealed, seg_bytes = (_int(writer.get(k)) for k in
                                     ("first_segment", "segment", "sealed_bytes", "segment_bytes"))
    blob, blob_bytes = _int(writer.get("blob")), _int(writer.get("blob_bytes"))
    out = []
    if None not in (first, seg, sealed, seg_bytes) and first <= seg:
        have = sum(size for i, size in files.segments.items() if first <= i < seg)
        if have < sealed:
            out.append(f"{segment_name(first)}..{segment_name(seg - 1)} hold {have:,} of the {sealed:,} "
                       "bytes written, records lost")
        now = files.segments.get(seg, 0)
        if now < seg_bytes:
            out.append(f"{segment_name(seg)} holds {now:,} of the {seg_bytes:,} bytes written, records lost")
    if blob is not None and blob_bytes is not None and files.blobs.get(blob, 0) < blob_bytes:
        out.append(f"{blob_name(blob)} holds {files.blobs.get(blob, 0):,} of the {blob_bytes:,} bytes "
                   "written, tensors lost")
    return out


def gap_losses(files: RankFiles) -> list[str]:
    """Segments missing between those present."""
    gaps, total = files.gaps()
    if not total:
        return []
    names = ", ".join(segment_name(i) for i in gaps) + (f" and {total - len(gaps):,} more" if total > len(gaps) else "")
    return [f"{names} missing between the segments present, records lost"]


def session_starts(rank_info: dict[str, Any]) -> list[int]:
    """First segment of each writer session of a rank, from rank.json (one session when unknown)."""
    sessions = rank_info.get("sessions")
    if not isinstance(sessions, list):
        return [0]
    starts = [_int(s.get("first_segment")) if isinstance(s, dict) else None for s in sessions]
    if not starts or None in starts or starts != sorted(starts):
        return [0]
    return starts
