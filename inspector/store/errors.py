"""Errors of the run store. Each one's message is a single line meant for a person."""
from __future__ import annotations


class RunError(Exception):
    """Base class: a run directory that cannot be opened or read as asked."""


class RunNotFoundError(RunError):
    """The path does not exist or holds no run."""


class CorruptRunError(RunError):
    """run.json or a rank's files are unreadable."""


class UnsupportedFormatError(RunError):
    """The run was written by a newer format version than this reader knows."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """Why `exc` happened, in one line of at most `limit` characters (an OSError's own words, without
    the errno and path that its str() repeats)."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"
