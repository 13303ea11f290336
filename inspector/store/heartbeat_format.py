"""The watchdog's files in a rank directory: what a hung job leaves for the hang verdict.

Every recording process runs a watchdog thread (`inspector.watchdog`) that keeps two kinds of
plain files in its rank directory, readable without our code (`cat`, `jq`), while the process is
alive and after it was killed:

- `heartbeat.json` (`HEARTBEAT_FILE`), rewritten atomically every `heartbeat_s` seconds: where the
  rank is (step, phase, module), when it last made progress, the collective it is inside, and per
  process group the last collective sequence number it entered and completed (see `Heartbeat`).
- `stacks-NNNN.txt` (`STACKS_PREFIX` + 4-digit counter + `STACKS_SUFFIX`), written when the rank
  made no progress for `hang_after_s` seconds and again every `repeat_s` while the stall lasts:
  `#`-prefixed header lines (`key: value`, see `STACK_HEADER_KEYS`), then the output of
  `faulthandler.dump_traceback(all_threads=True)` (blocks starting "Thread 0x…" or "Current thread
  0x…", frames `  File "path", line N in func`, most recent call first).

Sequence numbers count the collectives a process called on one process group, from 1, the same way
on every rank (every rank calls a group's collectives in the same order), so rank A's seq 42 and
rank B's seq 42 are the same collective unless the job is broken: that is how a rank missing from a
collective, or two ranks in different collectives, are found.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HEARTBEAT_FILE = "heartbeat.json"
HEARTBEAT_VERSION = 1
STACKS_PREFIX, STACKS_SUFFIX = "stacks-", ".txt"

PHASES = ("data", "forward", "backward", "optimizer", "collective", "eval", "checkpoint", "user", "closed")
"""Where a rank can be: in the data loader's `next()`, the model's forward or backward, the optimizer
step, a blocking collective (or waiting for an asynchronous one), `Watch.phase("eval")` or
`Watch.phase("checkpoint")`, user code between the above, or after `close()`."""

STACK_HEADER_KEYS = ("rank", "world_size", "pid", "host", "time", "step", "phase", "module", "stalled_s",
                     "collective", "main_thread")
"""Header lines of a stack dump, each `# key: value`: `time` is epoch seconds, `collective` the
`CollectiveRef` JSON (or `null`), `main_thread` the main thread's id as faulthandler prints it
(`0x%016x`), so the reader can find the training thread among all threads."""

RECENT_COLLECTIVES = 32
"""Collectives kept in `Heartbeat.recent` (and in a stack dump's header)."""


@dataclass
class CollectiveRef:
    """One collective call of one rank."""

    group: str                 # "default" for the world group, else the group's name
    op: str                    # e.g. "all_reduce", "all_gather_into_tensor", "barrier", "ddp_allreduce"
    seq: int                   # 1-based count of collectives this rank called on `group`
    shapes: list[list[int]] = field(default_factory=list)   # shapes of the tensors it sends
    dtype: str = ""            # e.g. "float32"
    entered: float = 0.0       # epoch seconds
    completed: float | None = None  # epoch seconds; None while not completed
    error: str = ""            # why it failed ("" unless it raised, e.g. a peer's connection closed)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"group": self.group, "op": self.op, "seq": self.seq, "shapes": self.shapes, "dtype": self.dtype,
                "entered": self.entered, "completed": self.completed, "error": self.error}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "CollectiveRef":
        """Inverse of `to_json` (missing keys take their defaults)."""
        return cls(group=str(d.get("group", "")), op=str(d.get("op", "")), seq=int(d.get("seq", 0)),
                   shapes=[list(map(int, s)) for s in d.get("shapes") or []], dtype=str(d.get("dtype", "")),
                   entered=float(d.get("entered") or 0.0),
                   completed=None if d.get("completed") is None else float(d["completed"]),
                   error=str(d.get("error") or ""))


@dataclass
class GroupState:
    """Per process group: the last sequence number entered and completed, and the group's ranks."""

    entered: int = 0
    completed: int = 0
    ranks: list[int] | None = None   # global ranks of the group (None: unknown)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"entered": self.entered, "completed": self.completed, "ranks": self.ranks}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "GroupState":
        """Inverse of `to_json`."""
        ranks = d.get("ranks")
        return cls(entered=int(d.get("entered", 0)), completed=int(d.get("completed", 0)),
                   ranks=None if ranks is None else [int(r) for r in ranks])


@dataclass
class Heartbeat:
    """The content of `heartbeat.json` (all times epoch seconds)."""

    rank: int
    world_size: int
    pid: int
    host: str
    time: float                 # when this heartbeat was written
    started: float              # when the watchdog started
    heartbeat_s: float
    hang_after_s: float
    step: int
    phase: str                  # one of PHASES
    module: str = ""            # the module being executed ("" when unknown or outside the model)
    phase_since: float = 0.0
    last_progress: float = 0.0  # the last time the rank made progress (any hook, collective or step event)
    collective: CollectiveRef | None = None  # the collective the rank is inside now
    groups: dict[str, GroupState] = field(default_factory=dict)
    recent: list[CollectiveRef] = field(default_factory=list)  # the last RECENT_COLLECTIVES, oldest first
    dumps: list[str] = field(default_factory=list)             # stack dump file names, oldest first
    closed: bool = False
    version: int = HEARTBEAT_VERSION

    @property
    def stalled_s(self) -> float:
        """Seconds without progress as of `time`."""
        return max(0.0, self.time - self.last_progress)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (the file's content)."""
        return {"version": self.version, "rank": self.rank, "world_size": self.world_size, "pid": self.pid,
                "host": self.host, "time": self.time, "started": self.started, "heartbeat_s": self.heartbeat_s,
                "hang_after_s": self.hang_after_s, "step": self.step, "phase": self.phase, "module": self.module,
                "phase_since": self.phase_since, "last_progress": self.last_progress,
                "stalled_s": self.stalled_s,
                "collective": None if self.collective is None else self.collective.to_json(),
                "groups": {k: v.to_json() for k, v in self.groups.items()},
                "recent": [c.to_json() for c in self.recent], "dumps": list(self.dumps), "closed": self.closed}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Heartbeat":
        """Inverse of `to_json`; raises KeyError/TypeError/ValueError on a malformed file."""
        coll = d.get("collective")
        return cls(rank=int(d["rank"]), world_size=int(d["world_size"]), pid=int(d["pid"]), host=str(d["host"]),
                   time=float(d["time"]), started=float(d["started"]), heartbeat_s=float(d["heartbeat_s"]),
                   hang_after_s=float(d["hang_after_s"]), step=int(d["step"]), phase=str(d["phase"]),
                   module=str(d.get("module", "")), phase_since=float(d.get("phase_since", 0.0)),
                   last_progress=float(d.get("last_progress", 0.0)),
                   collective=None if coll is None else CollectiveRef.from_json(coll),
                   groups={str(k): GroupState.from_json(v) for k, v in (d.get("groups") or {}).items()},
                   recent=[CollectiveRef.from_json(c) for c in d.get("recent") or []],
                   dumps=[str(x) for x in d.get("dumps") or []], closed=bool(d.get("closed", False)),
                   version=int(d.get("version", HEARTBEAT_VERSION)))


def stacks_file_name(n: int) -> str:
    """File name of the `n`-th stack dump of a rank (1-based)."""
    return f"{STACKS_PREFIX}{n:04d}{STACKS_SUFFIX}"
