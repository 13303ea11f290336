"""Opening run files defensively: regular files only, never through a symlink, never blocking.

A run directory may come from anywhere (a copy off a cluster, a crashed job, a malicious archive),
so the reader opens nothing but the regular files it expects: a named pipe of a segment's name
would block `open()` forever, a directory would fail on the first read, and a symlink could point
out of the directory a dashboard was told to serve.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class NotRegularFileError(OSError):
    """The path exists but is not a regular file (a directory, pipe, socket, device or symlink)."""


def open_regular(path: str | Path) -> int:
    """A read-only descriptor of `path`, which must be a regular file and not a symlink.

    Raises FileNotFoundError when it is missing and NotRegularFileError when it is something else.
    """
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:     # O_NOFOLLOW on a symlink
            raise NotRegularFileError(errno.ELOOP, "is a symlink", str(path)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFileError(errno.EINVAL, "not a regular file", str(path))
    return fd


def read_regular(path: str | Path, limit: int) -> bytes:
    """The bytes of a small regular file; ValueError when it holds more than `limit` bytes."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise ValueError(f"{size:,} bytes, more than the {limit:,} such a file may hold")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise ValueError(f"more than the {limit:,} bytes such a file may hold")
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_real_dir(path: str | Path) -> bool:
    """True when `path` is a directory itself (a symlink to one does not count)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
