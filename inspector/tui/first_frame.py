"""The TUI's first frame: the run's roll call, before a single record is read.

Opening a 1,024-rank job means reading every rank's segment tails and scoring the ranks, which takes
seconds; the roll call (`inspector.views.roll_call`: run.json, and per rank rank.json, closed.json,
heartbeat.json) takes tens of milliseconds and needs neither pandas nor pyarrow. So the app draws it
first: the header and, on the Ranks screen, the ranks likeliest to be in trouble with their hosts,
closed steps or last heartbeats; the snapshot built from the records replaces it (`Snapshot.partial`
marks the first). A roll call that fails for any reason is skipped: the poller says what is wrong.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

from inspector.views.roll_call import RankRoll, RollCall, roll_call_or_none
from inspector.tui.state import Request, RollCallData, Snapshot

READING = "reading records…"
ROLL_CALL_ROWS = 64
"""Ranks the roll call lists at most (no more than fit on screen: a table's first draw costs ~0.2 ms
a row; the full table that follows lists every rank)."""


def start_roll_call(path: str) -> Future:
    """Read the roll call of `path` on a thread of its own, started now (while Textual starts up);
    the future's result is the `RollCall`, or None when there is none to draw (no readable run.json
    yet, or any failure: the first frame is an extra, never a reason for the UI to fail)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roll-call")
    future = pool.submit(_roll_call_or_nothing, path)
    pool.shutdown(wait=False)
    return future


def _roll_call_or_nothing(path: str) -> RollCall | None:
    try:
        return roll_call_or_none(path)
    except Exception:  # noqa: BLE001 - an unforeseen file state must not stop the UI from opening
        return None


def first_snapshot(roll: RollCall | None, req: Request, *, frozen_now: float | None = None) -> Snapshot | None:
    """The roll call's snapshot for `req` (a payload on the Ranks screen only); None without one
    (no readable run.json yet: the poller says why)."""
    if roll is None:
        return None
    now = frozen_now if frozen_now is not None else time.time()
    status = "finished" if roll.all_closed else "open"
    last = roll.last_step
    return Snapshot(request=req, header=roll_call_header(roll, status), status=status,
                    last_step=-1 if last is None else last, ranks=[r.rank for r in roll.ranks],
                    payload=RollCallData(roll, now) if req.screen == "ranks" else None, partial=True)


def roll_call_header(roll: RollCall, status: str) -> str:
    """"job · finished · step 39 · 1,024/1,024 ranks on 128 nodes · reading records…"."""
    step = f" · step {roll.last_step:,}" if roll.last_step is not None else ""
    hosts = len(roll.hosts)
    nodes = f" on {hosts:,} node{'s' if hosts != 1 else ''}" if hosts else ""
    return f"{roll.name} · {status}{step} · {len(roll.ranks):,}/{roll.world_size:,} ranks{nodes} · {READING}"


def roll_rows(roll: RollCall, now: float, limit: int = ROLL_CALL_ROWS) -> list[dict[str, object]]:
    """The roll call's first `limit` rows: ranks that have not closed their files first, the oldest
    heartbeat first (the likeliest to be stuck), then by node and rank."""
    def order(r: RankRoll) -> tuple:
        return (r.closed, r.beat_time if r.beat_time is not None else -1.0, r.host or "", r.rank)

    return [roll_row(r, now) for r in sorted(roll.ranks, key=order)[:limit]]


def missing_ranks(roll: RollCall) -> int:
    """Ranks of the world size without a directory (not started, or their directory is gone)."""
    return max(roll.world_size - len(roll.ranks), 0)


def roll_row(r: RankRoll, now: float) -> dict[str, object]:
    """One Ranks-table row of the roll call: rank, node, step and what its files say of its state."""
    if r.closed:
        status = "finished"
    elif r.beat_time is not None:
        status = f"beat {max(now - r.beat_time, 0.0):.0f}s"
    else:
        status = "open"
    return {"rank": r.rank, "node": r.host or "", "step": r.last_step, "status": status}
