"""A run's roll call: who is in it, read from its small JSON files only.

Reading the records of 1,024 ranks takes seconds (pyarrow, pandas, every rank's segment tails); a
UI that opens a large job first wants to say at once what the job is: its ranks, the host of each,
which have closed their files (and at which step), and where each live rank's watchdog last said
it was. This module reads `run.json`, and per rank `rank.json`, `closed.json` and `heartbeat.json`,
with the standard library only (no numpy, pyarrow or pandas), and never raises on a damaged rank
file: that rank's fields stay unknown, and the full reader says what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inspector.store.errors import CorruptRunError, RunError
from inspector.store.format import CLOSED_FILE, RANK_META_FILE
from inspector.store.heartbeat_format import HEARTBEAT_FILE
from inspector.store.run_dir import load_run_meta, read_json, scan_rank_dirs


@dataclass(frozen=True)
class RankRoll:
    """One rank as its small files describe it (None: not said, or the file is unreadable)."""

    rank: int
    host: str | None
    closed: bool                 # closed.json is there: the rank closed its files cleanly
    last_step: int | None        # the closed rank's last step, else its heartbeat's step
    phase: str | None            # the heartbeat's phase ("forward", "all_reduce" …)
    beat_time: float | None      # when the heartbeat was written (epoch seconds)


@dataclass(frozen=True)
class RollCall:
    """The run's name, its expected world size and creation time, and every rank directory's roll."""

    name: str
    world_size: int
    created: float
    ranks: list[RankRoll]

    @property
    def hosts(self) -> list[str]:
        """The distinct hosts named, in rank order."""
        return list(dict.fromkeys(r.host for r in self.ranks if r.host))

    @property
    def last_step(self) -> int | None:
        """The newest step any rank's files name (None when none does)."""
        steps = [r.last_step for r in self.ranks if r.last_step is not None]
        return max(steps) if steps else None

    @property
    def all_closed(self) -> bool:
        """Every expected rank has a directory and closed it."""
        return bool(self.ranks) and len(self.ranks) >= self.world_size and all(r.closed for r in self.ranks)


def roll_call(run_dir: str | Path) -> RollCall:
    """The roll call of `run_dir`; RunError (one line) when `run.json` is missing or unreadable."""
    run_dir = Path(run_dir)
    meta = load_run_meta(run_dir)
    ranks = [_roll(rank, path) for rank, path in scan_rank_dirs(run_dir)[0]]
    return RollCall(meta.name, meta.world_size, meta.created, ranks)


def roll_call_or_none(run_dir: str | Path) -> RollCall | None:
    """`roll_call`, or None when there is no readable run yet (the full reader says why)."""
    try:
        return roll_call(run_dir)
    except (RunError, OSError):
        return None


def _roll(rank: int, path: Path) -> RankRoll:
    meta = _json_or_none(path / RANK_META_FILE)
    closed = _json_or_none(path / CLOSED_FILE)
    beat = _json_or_none(path / HEARTBEAT_FILE) if closed is None else None
    host = meta.get("host") if meta is not None else None
    step = _int(closed.get("last_step")) if closed is not None else None
    if beat is not None:
        host = host or beat.get("host")
        step = _int(beat.get("step"))
    time = beat.get("time") if beat is not None else None
    phase = beat.get("phase") if beat is not None else None
    return RankRoll(rank=rank, host=str(host) if host else None, closed=closed is not None, last_step=step,
                    phase=str(phase) if phase else None,
                    beat_time=float(time) if isinstance(time, (int, float)) and not isinstance(time, bool) else None)


def _json_or_none(path: Path) -> dict | None:
    try:
        return read_json(path)
    except CorruptRunError:     # missing, torn or not ours: the full reader reports it
        return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
