"""The segment and blob files of one rank directory, and what is lying there that is not one."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from inspector.store.format import BLOB_PREFIX, SEGMENT_PREFIX, blob_index, segment_index


@dataclass
class RankFiles:
    """Byte size of every segment and blob file (regular files only), by number, and strays."""

    segments: dict[int, int] = field(default_factory=dict)
    blobs: dict[int, int] = field(default_factory=dict)
    strays: list[str] = field(default_factory=list)

    def gaps(self, limit: int = 5) -> tuple[list[int], int]:
        """The first `limit` segment numbers missing below the highest one present, and how many
        are missing in all (every session starts after the last segment there is, so a hole means
        a segment went missing). Linear in the files present, not in the numbers."""
        if not self.segments:
            return [], 0
        present = sorted(self.segments)
        total = present[-1] + 1 - len(present)
        first, expected = [], 0
        for index in present:
            while expected < index and len(first) < limit:
                first.append(expected)
                expected += 1
            if len(first) >= limit:
                break
            expected = index + 1
        return first, total


def list_rank_files(rank_dir: Path) -> RankFiles:
    """Scan `rank_dir` once; entries named like a segment or blob that are not one are strays."""
    out = RankFiles()
    try:
        entries = list(os.scandir(rank_dir))
    except OSError as exc:
        out.strays.append(f"cannot list {rank_dir.name} ({exc.strerror or exc})")
        return out
    for entry in entries:
        name = entry.name
        if not name.startswith((SEGMENT_PREFIX, BLOB_PREFIX)):
            continue
        index = segment_index(name) if name.startswith(SEGMENT_PREFIX) else blob_index(name)
        if index is None:
            out.strays.append(f"ignored {name!r}: not a {name.split('-')[0]} file name")
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            out.strays.append(f"ignored {name}: {_what(st.st_mode)}, not a regular file")
            continue
        (out.segments if name.startswith(SEGMENT_PREFIX) else out.blobs)[index] = st.st_size
    out.strays.sort()
    return out


def _what(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    return "a special file"
