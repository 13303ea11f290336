"""`writer.json`: one writer per rank directory, and its state, kept even when the disk is full.

The file is created at a fixed size and held under an exclusive `flock` for the writer's life, so a
second process that would write the same rank (two `torch.multiprocessing.spawn` workers without
RANK, say) is refused instead of interleaving its frames with the first one's. Its state is
rewritten *in place* (`pwrite` over the same bytes), which needs no new disk block: a writer that
stopped on a full disk can still say so, where a new closed.json could not be written.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from inspector.store.format import WRITER_FILE, WRITER_FILE_BYTES


class RankInUseError(OSError):
    """Another live process holds this rank directory."""


class WriterState:
    """The lock and state file of one writer session of one rank directory."""

    def __init__(self, rank_dir: Path, info: dict[str, Any]) -> None:
        self.path = Path(rank_dir) / WRITER_FILE
        self.info = dict(info)
        self._extra: dict[str, Any] = {}
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(self._fd)
            os.close(self._fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RankInUseError(errno.EBUSY, f"{rank_dir.name} is being written by another process"
                                     f"{holder}; give every process its own rank (set RANK, or call "
                                     "torch.distributed.init_process_group before watch())") from None
            # A filesystem without locks (some network mounts): carry on without one.
            self._fd = os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        self.update("writing")

    def update(self, state: str, **extra: Any) -> None:
        """Rewrite the state in place (no new disk block is needed); `extra` fields stay until
        overwritten, so a failure keeps the last checkpoint."""
        self._extra.update(extra)
        record = {**self.info, **self._extra, "state": state, "updated": time.time()}
        data = json.dumps(record, sort_keys=True, default=str).encode()
        if len(data) > WRITER_FILE_BYTES:
            record["reason"] = str(record.get("reason", ""))[:200]
            data = json.dumps(record, sort_keys=True, default=str).encode()[:WRITER_FILE_BYTES]
        os.pwrite(self._fd, data.ljust(WRITER_FILE_BYTES), 0)

    def close(self) -> None:
        """Release the lock."""
        try:
            os.close(self._fd)
        except OSError:
            pass


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, WRITER_FILE_BYTES, 0).decode())
        return f" (pid {int(info['pid'])} on {str(info['host'])[:64]})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""
