"""The hang verdict: which ranks are stuck, where, and who is missing from which collective.

A pure function of a LiveRun's heartbeats (and, for the few ranks it names, their newest stack
dump) and a clock `now`. A rank is stuck when it made no progress for its `hang_after_s` (as of its
last heartbeat, by its own clock), or when it stopped reporting: no heartbeat rewrite for 3× its
`heartbeat_s` while not closed (killed or crashed). Per process group, the highest sequence number
some stuck rank waits in is compared with every member's: members that never entered it are
"missing" (and what they do instead is shown); members in the same sequence number with another op
or other shapes are a "mismatch". Healthy and finished runs give no verdict (None).

Scale: only heartbeats are read on each call (arrays over ranks); stack dumps only for the ranks the
verdict names (at most `NAMED_MAX`).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np

from inspector.store.heartbeat_format import CollectiveRef, Heartbeat
from inspector.store.heartbeat_read import StackFrame
from inspector.views.live import LiveRun

STALE_BEATS = 3.0
"""A heartbeat older than this many `heartbeat_s` (and not closed) means the process stopped reporting."""
NAMED_MAX = 8
"""Most ranks whose stack dumps are read and shown."""
USER_FRAMES = 5
"""Frames of a stuck rank's main thread shown (outside inspector/ and torch/), besides the innermost."""
LIBRARY_DIRS = ("inspector", "torch")
"""Frames in files under a directory of one of these names are library frames, not the user's (so are
the standard library's: `.../lib/python3.X/...` outside site-packages, and `<frozen ...>`); for
`inspector/` only when what follows is one of the package's own modules."""
_STDLIB_DIR = re.compile(r"python3\.\d+")
_OUR_NAMES = frozenset(p.name for p in Path(__file__).resolve().parents[1].iterdir())
"""Entries of the inspector package: `inspector/<one of these>` is ours (a user's own directory that
happens to be called "inspector" is not)."""


@dataclass
class RankState:
    """One rank as the verdict describes it (its last heartbeat, and its stack when it is named)."""

    rank: int
    state: str                  # "stalled", "stopped reporting", "running", "finished", "no heartbeat"
    step: int = -1
    phase: str = ""
    module: str = ""
    collective: CollectiveRef | None = None
    stalled_s: float = 0.0      # seconds without progress (up to its last heartbeat when it stopped reporting)
    age_s: float = 0.0          # seconds since its last heartbeat
    host: str = ""
    pid: int = 0
    frames: list[StackFrame] = field(default_factory=list)   # the user's frames, most recent first
    innermost: StackFrame | None = None   # the innermost frame, when it is not frames[0]
    dump: str = ""              # the stack dump file the frames come from
    dump_time: float | None = None

    @property
    def stuck(self) -> bool:
        """True when stalled or stopped reporting."""
        return self.state in ("stalled", "stopped reporting")

    @property
    def where(self) -> str:
        """"worker.py:57": the user's innermost frame (else the innermost frame; "" without a dump)."""
        frame = self.frames[0] if self.frames else self.innermost
        return frame.where if frame is not None else ""

    def doing(self) -> str:
        """What the rank does, to follow "rank N ": "is in data (loader) at step 7, worker.py:57",
        "stopped reporting (killed or crashed?), last seen in forward ...", "has finished (closed)"."""
        if self.state == "stopped reporting":
            return f"stopped reporting (killed or crashed?), last seen {self.activity()}"
        if self.state == "finished":
            return "has finished (closed)"
        if self.state == "no heartbeat":
            return "never wrote a heartbeat"
        return f"is {self.activity()}"

    def activity(self) -> str:
        """Where the rank is (or was at its last heartbeat), without its state."""
        if self.state == "finished":
            return "finished (closed)"
        if self.state == "no heartbeat":
            return "never wrote a heartbeat"
        if self.phase == "collective" and self.collective is not None:
            text = f"in {describe_collective(self.collective)}"
        else:
            text = f"in {self.phase or 'unknown phase'}" + (f" ({self.module})" if self.module else "")
            if self.collective is not None:          # an asynchronous one (DDP's gradient all-reduce)
                text += f", inside {describe_collective(self.collective)}"
        if self.step >= 0:
            text += f" at step {self.step}"
        if self.where:
            text += f", {self.where}"
        return text


@dataclass
class Desync:
    """A collective of one group the ranks disagree on: some never entered it ("missing"), or ranks
    at the same sequence number call different ops or shapes ("mismatch")."""

    group: str
    seq: int
    kind: str                    # "missing" or "mismatch"
    op: str = ""
    shapes: list[list[int]] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)     # ranks inside it
    missing: list[int] = field(default_factory=list)     # ranks of the group that never entered it
    variants: list[tuple[str, list[list[int]], list[int]]] = field(default_factory=list)  # (op, shapes, ranks)
    entered: float = float("inf")   # the earliest time a waiting rank entered it (epoch seconds)

    def line(self) -> str:
        """One line: "ranks 0,2,3 wait in all_reduce #42; rank 1 never entered it"."""
        name = _coll_name(self.op, self.seq, self.group)
        if self.kind == "mismatch":
            parts = [f"{_ranks_word(r)} {rank_list(r)} call{'s' if len(r) == 1 else ''} {op} {_shapes(s)}"
                     for op, s, r in self.variants]
            return f"mismatch at #{self.seq}{_group_suffix(self.group)}: " + "; ".join(parts)
        return (f"{_ranks_word(self.waiting)} {rank_list(self.waiting)} {_wait(self.waiting)} in {name}; "
                f"{_ranks_word(self.missing)} {rank_list(self.missing)} never entered it")


@dataclass
class HangVerdict:
    """Everything the UIs show about a hang."""

    headline: str
    stuck: list[RankState]                 # every stuck rank, by rank
    named: list[RankState]                 # the ranks the verdict points at (with frames), culprits first
    desyncs: list[Desync] = field(default_factory=list)
    processes_gone: bool = False           # no rank is reporting any more: the last state is shown
    last_heartbeat: float = 0.0            # newest heartbeat time of any rank
    silent: list[int] = field(default_factory=list)   # ranks of the world without a heartbeat file
    world_size: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def stuck_ranks(self) -> list[int]:
        """Ranks of `stuck`."""
        return [s.rank for s in self.stuck]


def rank_list(ranks: list[int] | np.ndarray, limit: int = 12) -> str:
    """"0,2,3", "0-127,129" (runs of 3 or more as ranges; more than `limit` pieces cut with "+N more")."""
    rs = sorted(int(r) for r in ranks)
    pieces: list[str] = []
    i = 0
    while i < len(rs):
        j = i
        while j + 1 < len(rs) and rs[j + 1] == rs[j] + 1:
            j += 1
        if j - i >= 2:
            pieces.append(f"{rs[i]}-{rs[j]}")
        else:
            pieces.extend(str(r) for r in rs[i:j + 1])
        i = j + 1
    if len(pieces) > limit:
        return ",".join(pieces[:limit]) + f" (+{len(pieces) - limit} more)"
    return ",".join(pieces)


def _ranks_word(ranks: list[int]) -> str:
    return "rank" if len(ranks) == 1 else "ranks"


def _wait(ranks: list[int]) -> str:
    return "waits" if len(ranks) == 1 else "wait"


def _group_suffix(group: str) -> str:
    return "" if group in ("", "default") else f" (group {group})"


def _coll_name(op: str, seq: int, group: str) -> str:
    return f"{op or 'collective'} #{seq}{_group_suffix(group)}"


def _shapes(shapes: list[list[int]]) -> str:
    return ", ".join("[" + ", ".join(map(str, s)) + "]" for s in shapes) or "[]"


def describe_collective(c: CollectiveRef) -> str:
    """"all_reduce #42 [4, 4]" ("(group g)" after the number outside the default group)."""
    return f"{_coll_name(c.op, c.seq, c.group)} {_shapes(c.shapes)}" if c.shapes else _coll_name(c.op, c.seq, c.group)


def is_library_frame(frame: StackFrame) -> bool:
    """True for a frame in a file under an `inspector/` or `torch/` directory, or of the standard library."""
    if frame.file.startswith("<frozen"):
        return True
    parts = PurePath(frame.file).parts
    dirs = parts[:-1]
    for i, part in enumerate(dirs):
        if part == "torch" or (part == "inspector" and parts[i + 1] in _OUR_NAMES):
            return True
    in_packages = "site-packages" in dirs or "dist-packages" in dirs
    return not in_packages and any(a == "lib" and _STDLIB_DIR.fullmatch(b) for a, b in zip(dirs, dirs[1:]))


def pick_frames(frames: list[StackFrame], n: int = USER_FRAMES) -> tuple[list[StackFrame], StackFrame | None]:
    """(the user's `n` most recent frames, the innermost frame when it is not the first of those)."""
    user = [f for f in frames if not is_library_frame(f)][:n]
    innermost = frames[0] if frames and (not user or frames[0] != user[0]) else None
    return user, innermost


@dataclass
class _Arrays:
    """Heartbeats as arrays over ranks (rebuilt only when a heartbeat file changed)."""

    ranks: np.ndarray
    beats: list[Heartbeat]
    time: np.ndarray
    last_progress: np.ndarray
    hang_after: np.ndarray
    beat_s: np.ndarray
    closed: np.ndarray          # the heartbeat says so (see `_closed` for the store's own marker)


def _arrays(run: LiveRun, beats: dict[int, Heartbeat]) -> _Arrays:
    def build() -> _Arrays:
        hbs = list(beats.values())
        closed = np.fromiter((hb.closed or hb.phase == "closed" for hb in hbs), bool, len(hbs))
        return _Arrays(ranks=np.fromiter(beats, np.int64, len(beats)), beats=hbs,
                       time=np.fromiter((hb.time for hb in hbs), float, len(hbs)),
                       last_progress=np.fromiter((hb.last_progress for hb in hbs), float, len(hbs)),
                       hang_after=np.fromiter((hb.hang_after_s for hb in hbs), float, len(hbs)),
                       beat_s=np.fromiter((hb.heartbeat_s for hb in hbs), float, len(hbs)), closed=closed)
    return run.cached(("hang-arrays",), (LiveRun.HEARTBEAT_KIND,), build)


def _closed(run: LiveRun, a: _Arrays) -> np.ndarray:
    """Ranks closed by their heartbeat or by the store's closed marker (a run closed before the
    watchdog's last rewrite)."""
    closed = a.closed.copy()
    for i in np.flatnonzero(~closed):
        closed[i] = run.reader.closed_info(int(a.ranks[i])) is not None
    return closed


def _state(hb: Heartbeat, state: str, now: float, age: float) -> RankState:
    stalled = max(0.0, hb.time - hb.last_progress) + (max(0.0, now - hb.time) if state == "stalled" else 0.0)
    return RankState(rank=hb.rank, state=state, step=hb.step, phase=hb.phase, module=hb.module,
                     collective=hb.collective, stalled_s=stalled, age_s=max(0.0, age), host=hb.host, pid=hb.pid)


def _attach_frames(run: LiveRun, s: RankState, hb: Heartbeat | None) -> None:
    """The rank's newest dump (named by its heartbeat when it lists one: no directory scan)."""
    name = hb.dumps[-1] if hb is not None and hb.dumps else None
    dump = run.stack_dump(s.rank, name)
    if dump is None or not dump.threads:
        return
    try:
        dump_time = float(dump.header.get("time", "nan"))
    except ValueError:
        dump_time = float("nan")
    if hb is not None and np.isfinite(dump_time) and dump_time < hb.last_progress:
        return          # written during an earlier stall: not where the rank is now
    main = dump.main_thread
    if main is None:
        return
    s.frames, s.innermost = pick_frames(main.frames)
    if name is None:
        files = run.stack_dump_files(s.rank)
        name = files[-1].name if files else ""
    s.dump = name
    s.dump_time = dump_time if np.isfinite(dump_time) else None


def _group_members(beats: dict[int, Heartbeat], group: str, world: int) -> list[int]:
    for hb in beats.values():
        gs = hb.groups.get(group)
        if gs is not None and gs.ranks is not None:
            return sorted(gs.ranks)
    if group == "default":
        return list(range(max(world, max(beats) + 1 if beats else 0)))
    return sorted(r for r, hb in beats.items() if group in hb.groups)


def _signature(c: CollectiveRef) -> tuple[str, tuple[tuple[int, ...], ...]]:
    return c.op, tuple(tuple(s) for s in c.shapes)


def _at_seq(hb: Heartbeat, group: str, seq: int) -> CollectiveRef | None:
    """The collective `seq` of `group` as `hb` knows it (the current one, else from its recent list)."""
    c = hb.collective
    if c is not None and c.group == group and c.seq == seq:
        return c
    for c in reversed(hb.recent):
        if c.group == group and c.seq == seq:
            return c
    return None


def _desyncs(beats: dict[int, Heartbeat], stuck: set[int], world: int) -> list[Desync]:
    groups = sorted({g for hb in beats.values() for g in hb.groups})
    out: list[Desync] = []
    for group in groups:
        members = _group_members(beats, group, world)
        if not members:
            continue
        entered_M = np.array([beats[r].groups[group].entered if r in beats and group in beats[r].groups else 0
                              for r in members], dtype=np.int64)
        completed_M = np.array([beats[r].groups[group].completed if r in beats and group in beats[r].groups else 0
                                for r in members], dtype=np.int64)
        members_M = np.asarray(members, dtype=np.int64)
        inside_M = (completed_M < entered_M) & np.isin(members_M, list(stuck))
        if not inside_M.any():
            continue
        top = int(entered_M[inside_M].max())
        waiting = [int(r) for r in members_M[(entered_M == top) & (completed_M < top)]]
        missing = [int(r) for r in members_M[entered_M < top]]
        # Ranks at the same sequence number: do they call the same op with the same shapes?
        sigs: dict[tuple, list[int]] = {}
        refs: dict[tuple, CollectiveRef] = {}
        for r in members_M[entered_M >= top]:
            c = _at_seq(beats[int(r)], group, top) if int(r) in beats else None
            if c is not None:
                sig = _signature(c)
                sigs.setdefault(sig, []).append(int(r))
                refs.setdefault(sig, c)
        ref = refs[max(sigs, key=lambda k: len(sigs[k]))] if sigs else None
        entered = min((c.entered for k in sigs for c in [refs[k]] if c.entered), default=float("inf"))
        if len(sigs) > 1:
            variants = sorted(((refs[k].op, refs[k].shapes, rs) for k, rs in sigs.items()), key=lambda v: -len(v[2]))
            out.append(Desync(group=group, seq=top, kind="mismatch", op=ref.op if ref else "",
                              shapes=ref.shapes if ref else [], waiting=waiting, missing=missing, variants=variants,
                              entered=entered))
        elif missing:
            out.append(Desync(group=group, seq=top, kind="missing", op=ref.op if ref else "",
                              shapes=ref.shapes if ref else [], waiting=waiting, missing=missing, entered=entered))
    # The likeliest cause first: a collective a rank skipped (it went on to one that comes later in its
    # program), then few ranks missing from a collective many wait in; on a tie the one waited in first.
    return sorted(out, key=lambda d: (d.kind != "missing", not _skipped(beats, d), len(d.missing), d.entered,
                                      -len(d.waiting)))


def _entered_at(hb: Heartbeat, group: str, seq: int) -> float | None:
    c = _at_seq(hb, group, seq)
    return c.entered if c is not None and c.entered else None


def _skipped(beats: dict[int, Heartbeat], d: Desync) -> bool:
    """Did a rank missing from `d` skip it? It waits in another group's collective that, the previous
    time round (sequence numbers one lower, both completed in step), it entered after `d`'s group:
    it passed the point where `d` comes in its program. Two ranks each waiting in a collective the
    other never entered are told apart this way, not by the clock (which one entered first is a race)."""
    for m in d.missing:
        hb = beats.get(m)
        c = hb.collective if hb is not None else None
        if c is None or c.group == d.group or d.seq < 2 or c.seq < 2:
            continue
        mine, theirs = _entered_at(hb, d.group, d.seq - 1), _entered_at(hb, c.group, c.seq - 1)
        if mine is not None and theirs is not None and mine < theirs:
            return True
    return False


def _failed_collectives(beats: dict[int, Heartbeat]) -> dict[int, CollectiveRef]:
    """Per rank, the newest collective that raised (a peer died, a timeout), as its heartbeat says."""
    out: dict[int, CollectiveRef] = {}
    for r, hb in beats.items():
        refs = [c for c in [*hb.recent, hb.collective] if c is not None and c.error]
        if refs:
            out[r] = max(refs, key=lambda c: c.entered)
    return out


def _culprits(desyncs: list[Desync], stale: list[int], stuck: list[RankState]) -> list[int]:
    out: list[int] = list(stale)
    for d in desyncs:
        if d.kind == "missing":
            out += d.missing
        else:
            out += [r for _, _, rs in d.variants[1:] for r in rs] + d.variants[0][2][:1]
    if not out:
        out = [s.rank for s in stuck if s.phase != "collective"] or [s.rank for s in stuck]
    return list(dict.fromkeys(out))


def _headline(desyncs: list[Desync], stale: list[RankState], named: dict[int, RankState],
              stuck: list[RankState], gone: bool, last: float, failed: dict[int, CollectiveRef]) -> str:
    missing = next((d for d in desyncs if d.kind == "missing"), None)
    mismatch = next((d for d in desyncs if d.kind == "mismatch"), None)
    if gone:
        suffix = f" — the processes are gone (last heartbeat {time.strftime('%H:%M:%S', time.gmtime(last))} UTC): last state shown"
    else:
        suffix = ""
    if stale:
        first = stale[0]
        text = (f"{_ranks_word([s.rank for s in stale])} {rank_list([s.rank for s in stale])} stopped reporting "
                f"(killed or crashed?), last seen {first.activity()}")
        if missing is not None and set(missing.missing) & {s.rank for s in stale}:
            text += f": {_ranks_word(missing.waiting)} {rank_list(missing.waiting)} {_wait(missing.waiting)} in " \
                    f"{_coll_name(missing.op, missing.seq, missing.group)}"
        elif missing is not None:
            text += f"; {missing.line()}"
        if failed:
            c = failed[min(failed)]
            text += (f"; {_ranks_word(sorted(failed))} {rank_list(sorted(failed))} saw "
                     f"{_coll_name(c.op, c.seq, c.group)} fail ({c.error})")
        return text + suffix
    if missing is not None:
        culprit = named.get(missing.missing[0])
        text = (f"{_ranks_word(missing.missing)} {rank_list(missing.missing)} never entered "
                f"{_coll_name(missing.op, missing.seq, missing.group)} that {_ranks_word(missing.waiting)} "
                f"{rank_list(missing.waiting)} {_wait(missing.waiting)} in")
        if culprit is not None:
            text += f": rank {culprit.rank} {culprit.doing()}"
        return text + suffix
    if mismatch is not None:
        odd = next((named[r] for _, _, rs in mismatch.variants[1:] for r in rs if r in named), None)
        where = f": rank {odd.rank} is at {odd.where}" if odd is not None and odd.where else ""
        return mismatch.line() + where + suffix
    ranks = [s.rank for s in stuck]
    first = named.get(ranks[0]) or stuck[0]
    if all(s.state == "stopped reporting" for s in stuck):
        return (f"{_ranks_word(ranks)} {rank_list(ranks)} stopped reporting together (killed or crashed?): "
                f"rank {first.rank} was last {first.activity()}" + suffix)
    return f"{_ranks_word(ranks)} {rank_list(ranks)} stuck: rank {first.rank} {first.doing()}" + suffix


def hang_verdict(run: LiveRun, now: float | None = None, *, frames: bool = True) -> HangVerdict | None:
    """The hang verdict of `run` at time `now` (epoch seconds; None: the clock), or None when no rank
    is stuck (a healthy or finished run, or one without a watchdog). `frames=False` skips the
    stack dumps (the cheap check a poller runs before deciding to redraw)."""
    now = time.time() if now is None else now
    beats = run.heartbeats()
    if not beats:
        return None
    a = _arrays(run, beats)
    mtimes = run.heartbeat_mtimes()
    seen_R = np.maximum(a.time, np.fromiter((mtimes.get(int(r), 0.0) for r in a.ranks), float, len(a.ranks)))
    age_R = now - seen_R
    closed_R = _closed(run, a)
    stale_R = ~closed_R & (age_R > STALE_BEATS * a.beat_s)
    stalled_R = ~closed_R & ~stale_R & (a.time - a.last_progress >= a.hang_after)
    if not (stale_R | stalled_R).any():
        return None
    gone = bool(stale_R[~closed_R].all())
    if gone:
        # Every process is gone: judge by the last state. A rank stalled at its last heartbeat is
        # stuck; one that stopped reporting well before the others (killed first) stays "stopped".
        was_stalled_R = a.time - a.last_progress >= a.hang_after
        died_first_R = a.time < a.time.max() - STALE_BEATS * a.beat_s
        stale_R = stale_R & (died_first_R | ~was_stalled_R)
        stalled_R = ~closed_R & ~stale_R & was_stalled_R
    stuck_idx = np.flatnonzero(stale_R | stalled_R)
    stuck = [_state(a.beats[i], "stopped reporting" if stale_R[i] else "stalled", 0.0 if gone else now, age_R[i])
             for i in stuck_idx]
    world = max(int(run.meta.world_size or 0), int(a.ranks.max()) + 1)
    silent = sorted(set(range(world)) - set(int(r) for r in a.ranks))
    stuck_set = {s.rank for s in stuck}
    desyncs = _desyncs(beats, stuck_set, world)
    stale = [s for s in stuck if s.state == "stopped reporting"]
    failed = _failed_collectives(beats)
    if gone and len(stale) == len(stuck) > 1 and not closed_R.any():
        # All stopped together (the launcher killed the job when one died): the ones that saw a
        # collective fail were the survivors; without that, nothing singles one out.
        unfailed = [s for s in stale if s.rank not in failed]
        stale = unfailed if failed and unfailed else []
    culprits = _culprits(desyncs, [s.rank for s in stale], stuck)
    by_rank = {s.rank: s for s in stuck}
    named: dict[int, RankState] = {}
    waiting_reps = [d.waiting[0] for d in desyncs if d.waiting]
    for r in list(dict.fromkeys(culprits + waiting_reps))[:NAMED_MAX]:
        if r in by_rank:
            s = by_rank[r]
        elif r in beats:
            i = int(np.flatnonzero(a.ranks == r)[0])
            s = _state(beats[r], "finished" if closed_R[i] else "running", now, age_R[i])
        else:
            s = RankState(rank=r, state="no heartbeat")
        if frames and r in beats:
            _attach_frames(run, s, beats[r])
        named[r] = s
    headline = _headline(desyncs, stale, named, stuck, gone, float(a.time.max()), failed)
    return HangVerdict(headline=headline, stuck=stuck, named=list(named.values()), desyncs=desyncs,
                       processes_gone=gone, last_heartbeat=float(a.time.max()), silent=silent, world_size=world,
                       problems=run.heartbeat_problems())


def format_age(seconds: float) -> str:
    """"45 s", "3m 05s", "1h 02m"."""
    s = int(max(seconds, 0))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s} s"


def verdict_signature(v: HangVerdict | None) -> tuple | None:
    """What a UI needs to redraw on: the headline and the stuck ranks (not the growing stall times)."""
    if v is None:
        return None
    return (v.headline, tuple(v.stuck_ranks), tuple((s.rank, s.dump) for s in v.named))




@dataclass
class StuckRow:
    """One row of the stuck-ranks table: one named rank, or a group of ranks in the same state."""

    ranks: list[int]
    state: str
    step: int
    phase: str
    module: str
    collective: str          # "all_reduce #42 [4]" or ""
    stalled_s: float         # the longest stall of the row's ranks
    host: str                # "node0:1234" for one rank, "" for a group
    where: str               # the user's frame ("worker.py:57"), "" without a dump
    named: bool = False
    age_s: float = 0.0       # seconds since the (newest) last heartbeat of the row's ranks

    @property
    def stalled_text(self) -> str:
        """"30 s" without progress, or "silent 45 s" for ranks that stopped reporting."""
        return f"silent {format_age(self.age_s)}" if self.state == "stopped reporting" else format_age(self.stalled_s)


def stuck_table(v: HangVerdict, max_rows: int = 24) -> list[StuckRow]:
    """The ranks the verdict names (one row each, culprits first), then the other stuck ranks grouped
    by what they do (state, step, phase, module, collective); at most `max_rows` rows."""
    rows = [StuckRow([s.rank], s.state, s.step, s.phase, s.module,
                     describe_collective(s.collective) if s.collective else "", s.stalled_s,
                     f"{s.host}:{s.pid}" if s.host else "", s.where, named=True, age_s=s.age_s) for s in v.named]
    named = {s.rank for s in v.named}
    groups: dict[tuple, StuckRow] = {}
    for s in v.stuck:
        if s.rank in named:
            continue
        coll = describe_collective(s.collective) if s.collective else ""
        key = (s.state, s.step, s.phase, s.module, coll)
        row = groups.get(key)
        if row is None:
            groups[key] = StuckRow([s.rank], s.state, s.step, s.phase, s.module, coll, s.stalled_s, "", "",
                                   age_s=s.age_s)
        else:
            row.ranks.append(s.rank)
            row.stalled_s = max(row.stalled_s, s.stalled_s)
            row.age_s = min(row.age_s, s.age_s)
    rows += sorted(groups.values(), key=lambda r: -len(r.ranks))
    return rows[:max_rows]
