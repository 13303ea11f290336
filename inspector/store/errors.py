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
