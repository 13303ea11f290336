"""The collective tracker: which collectives this rank entered and completed, per process group with
sequence numbers, and how long each step waited in them.

Why our own records and not PyTorch's Flight Recorder: in torch 2.13 the Flight Recorder
(`torch._C._distributed_c10d._dump_fr_trace`) records gloo collectives without any environment
variable, with `collective_seq_id`, sizes and dtypes, but for gloo its entries stay in state
"scheduled" with no started/completed times, so it cannot say whether a rank completed a
collective nor how long it waited; and it is a process-wide pickle, read only by dumping. The
tracker here keeps the same sequence numbers (1-based per group, equal across ranks) plus entered
and completed times, for gloo and NCCL alike, at a few microseconds per call.

Sources:
- calls to the public `torch.distributed` collectives (`collective_patch`: wrapped on the module
  while a tracker is installed). A blocking call puts the rank in phase "collective" for its
  duration; an `async_op=True` call completes when its Work's future does (`get_future().then`).
- DDP's gradient buckets, which its C++ reducer sends without Python: `attach_ddp` registers
  `comm_hook.recording_allreduce_hook` (the default all-reduce, recorded; bit-identical results,
  tested), op "ddp_allreduce".
Not covered: functional collectives (`torch.distributed._functional_collectives`, DTensor
redistribution), point-to-point ops, and the time a rank waits on an async Work (`work.wait()`);
while an async collective is incomplete, `snapshot()` reports the oldest such as the one the rank
is in.

Per-step times (`step_times`, called once per step by the Watch, written as `timing` rows by
`record_step_times`): `comm_wait` ms, the time in blocking collectives plus DDP's wait for the
other ranks (from the last bucket's hook, i.e. the end of this rank's backward computation, to the
last bucket's completion); `comm_wait_<phase>` the part of it that fell in `<phase>` (DDP's wait is
in "backward"), so the views can subtract it from that phase's time.

Nothing here raises into training: a failure is logged once and turns the tracker off. A collective
that raises (a peer died, a timeout) stays incomplete with its error, and `on_error` is told at once.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections import deque
from typing import Any, Callable

import torch
import torch.distributed as dist

from inspector.store.heartbeat_format import RECENT_COLLECTIVES, CollectiveRef, GroupState
from inspector.watchdog import collective_patch
from inspector.watchdog.progress import Progress

log = logging.getLogger("inspector")

TIMING_NAME = "collectives"
"""`timing` rows of `record_step_times`: name "collectives", phase "comm_wait" / "comm_wait_<phase>"."""


def _dtype_name(tensors: list[Any]) -> str:
    return str(tensors[0].dtype).removeprefix("torch.") if tensors else ""


class CollectiveTracker:
    """Collectives of one rank, per process group (see the module docstring)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.groups: dict[str, GroupState] = {}
        self.recent: deque[CollectiveRef] = deque(maxlen=RECENT_COLLECTIVES)
        self.current: CollectiveRef | None = None
        self.failed: str | None = None
        self._names: dict[Any, tuple[str, list[int] | None] | None] = {}
        self._descs: dict[str, str] = {}   # group_desc -> the c10d name of the first group that had it
        self._installs = 0
        self._wait_s: dict[str, float] = {}
        self._ddp_entered = 0.0
        self._ddp_done = 0.0
        self.on_error: Callable[[], None] | None = None   # called after a collective failed (the watchdog
        # writes its heartbeat at once: the launcher may kill this process a moment later)

    # --- life cycle -------------------------------------------------------------------------
    def install(self) -> None:
        """Start recording `torch.distributed` calls (idempotent per tracker; trackers share the wrappers)."""
        self._installs += 1
        if self._installs == 1:
            collective_patch.add_listener(self)

    def uninstall(self) -> None:
        """Stop recording; the last tracker out puts the original functions back. A DDP hook stays
        registered (DDP cannot remove one) and keeps all-reducing, without recording."""
        if self._installs == 0:
            return
        self._installs -= 1
        if self._installs == 0:
            collective_patch.remove_listener(self)

    @property
    def active(self) -> bool:
        """Installed and not switched off by a failure."""
        return self._installs > 0 and self.failed is None

    def attach_ddp(self, model: Any) -> str | None:
        """Record a `DistributedDataParallel` model's gradient buckets through a comm hook; returns why
        not (not DDP, a hook already registered, DDP refused), or None when attached."""
        from torch.nn.parallel import DistributedDataParallel

        from inspector.watchdog.comm_hook import DDPHookState, recording_allreduce_hook

        if not isinstance(model, DistributedDataParallel):
            return "not a DistributedDataParallel model"
        if getattr(model, "_comm_hooks", None):
            return "the model already has a comm hook"
        try:
            model.register_comm_hook(DDPHookState(self, model.process_group), recording_allreduce_hook)
        except Exception as exc:  # noqa: BLE001 - e.g. a built-in hook registered before
            return f"register_comm_hook refused: {type(exc).__name__}: {exc}"
        return None

    def _fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning("inspector: collective tracking switched off: %s", self.failed)

    # --- recording (called by the wrappers and the DDP hook) -------------------------------------
    def _group(self, group: Any) -> tuple[str, list[int] | None] | None:
        """(name, global ranks) of a process group; None when this rank is not in it."""
        key = group
        try:
            return self._names[key]
        except (KeyError, TypeError):
            pass
        c10d = dist.distributed_c10d
        if group is None or group is c10d.GroupMember.WORLD:
            named: tuple[str, list[int] | None] | None = ("default", list(range(dist.get_world_size())))
        elif c10d._rank_not_in_group(group):
            named = None
        else:
            named = (self._label(group), sorted(dist.get_process_group_ranks(group)))
        try:
            self._names[key] = named
        except TypeError:
            pass
        return named

    def _label(self, group: Any) -> str:
        """The name a group goes by in the records: its `group_desc` ("metrics", a DeviceMesh
        dimension's "mesh_dp") when it was given one and no other group of this process took it
        first, else "<desc>.<c10d name>", else the c10d name ("1", "2", …). Groups are created in
        the same order on every rank, so every rank gives a group the same name."""
        pg_name = dist.distributed_c10d._get_process_group_name(group)
        desc = str(getattr(group, "group_desc", "") or "")
        if not desc or desc == "undefined":
            return pg_name
        owner = self._descs.setdefault(desc, pg_name)
        return desc if owner == pg_name else f"{desc}.{pg_name}"

    def _enter(self, op: str, group: Any, sent: Any) -> CollectiveRef | None:
        named = self._group(group)
        if named is None:
            return None
        name, ranks = named
        state = self.groups.get(name)
        if state is None:
            state = self.groups[name] = GroupState(ranks=ranks)
        state.entered += 1
        tensors = collective_patch.tensors_of(sent)
        ref = CollectiveRef(group=name, op=op, seq=state.entered, shapes=[list(t.shape) for t in tensors],
                            dtype=_dtype_name(tensors), entered=time.time())
        self.recent.append(ref)
        return ref

    def _collective_failed(self, ref: CollectiveRef, exc: BaseException | None) -> None:
        """`ref` raised (e.g. a peer died): keep it, incomplete, with the error, and tell `on_error`."""
        what = "failed" if exc is None else f"{type(exc).__name__}: {exc}"
        ref.error = " ".join(what.split())[:300]
        if self.on_error is not None:
            self.on_error()

    def _complete(self, ref: CollectiveRef) -> None:
        ref.completed = time.time()
        state = self.groups.get(ref.group)
        if state is not None and ref.seq > state.completed:
            state.completed = ref.seq
        self.progress.tick()

    def begin(self, op: str, group: Any, sent: Any, is_async: bool) -> Any:
        """Before a wrapped collective: a token for `end` (None: not followed)."""
        if self.failed is not None:
            return None
        try:
            ref = self._enter(op, group, sent)
            if ref is None or is_async:
                return ref and (ref, None, 0.0, "")
            phase = self.progress.phase
            self.current = ref
            self.progress.collective = ref
            previous = self.progress.enter("collective", self.progress.module)
            return ref, previous, time.perf_counter(), phase
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return None

    def end(self, token: Any, result: Any, raised: bool) -> None:
        """After a wrapped collective returned (`result`: its Work when async) or raised."""
        if token is None:
            return
        ref, previous, t0, phase = token
        try:
            if previous is None:
                fut = None if raised or result is None else result.get_future()
                if raised:
                    self._collective_failed(ref, sys.exc_info()[1])
                elif fut is None:
                    self._complete(ref)
                else:
                    fut.then(lambda f, ref=ref: self._async_done(ref, f))
                return
            waited = time.perf_counter() - t0
            self._wait_s[phase] = self._wait_s.get(phase, 0.0) + waited
            self.current = None
            self.progress.collective = None
            self.progress.leave(previous)
            if raised:
                self._collective_failed(ref, sys.exc_info()[1])
            else:
                self._complete(ref)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _async_done(self, ref: CollectiveRef, fut: torch.futures.Future) -> None:
        """An async collective's future finished (on the backend's thread): completed, or failed."""
        try:
            error = _future_error(fut)
            if error is None:
                self._complete(ref)
            else:
                self._collective_failed(ref, error)
        except Exception as exc:  # noqa: BLE001 - runs on the backend's thread
            self._fail(exc)

    def ddp_begin(self, buffer: Any, group: Any) -> CollectiveRef | None:
        """A DDP bucket's hook was called (its gradients are ready): record it."""
        if not self.active:
            return None
        try:
            ref = self._enter("ddp_allreduce", group, buffer)
            if ref is not None:
                self._ddp_entered = max(self._ddp_entered, ref.entered)
            return ref
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return None

    def ddp_done(self, ref: CollectiveRef | None, error: BaseException | None = None) -> None:
        """A DDP bucket's all-reduce completed, or failed with `error` (on the backend's thread)."""
        if ref is None:
            return
        try:
            if error is not None:
                self._collective_failed(ref, error)
                return
            self._complete(ref)
            self._ddp_done = max(self._ddp_done, ref.completed or 0.0)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    # --- readers ---------------------------------------------------------------------------------
    def snapshot(self) -> tuple[dict[str, GroupState], list[CollectiveRef], CollectiveRef | None]:
        """Copies of (groups, recent collectives oldest first, the one the rank is in now: the blocking
        call it is inside, else the oldest incomplete async one, else None). Takes no lock: safe
        to call from the watchdog thread."""
        groups = {k: dataclasses.replace(v, ranks=None if v.ranks is None else list(v.ranks))
                  for k, v in list(self.groups.items())}
        recent = [dataclasses.replace(r, shapes=[list(s) for s in r.shapes]) for r in list(self.recent)]
        current = self.current
        if current is None:
            current = next((r for r in recent if r.completed is None), None)
        else:
            current = dataclasses.replace(current)
        return groups, recent, current

    def step_times(self, step: int) -> dict[str, float]:
        """Milliseconds of communication wait since the previous call (call once at the end of each
        step): "comm_wait" and "comm_wait_<phase>" (see the module docstring). `step` is the step
        they belong to (for the caller's records; the tracker keeps no per-step history)."""
        waits, self._wait_s = self._wait_s, {}
        ddp_s = max(0.0, self._ddp_done - self._ddp_entered) if self._ddp_entered else 0.0
        self._ddp_entered = self._ddp_done = 0.0
        if ddp_s:
            waits["backward"] = waits.get("backward", 0.0) + ddp_s
        out = {"comm_wait": 1000.0 * sum(waits.values())}
        for phase, s in waits.items():
            out[f"comm_wait_{phase}"] = 1000.0 * s
        return out


def _future_error(fut: torch.futures.Future) -> BaseException | None:
    """The error a finished future holds, or None when it holds a value."""
    try:
        fut.wait()
    except Exception as exc:  # noqa: BLE001 - the backend's error, whatever its type
        return exc
    return None


def record_step_times(tracker: CollectiveTracker | None, recorder: Any, step: int) -> None:
    """Write `tracker.step_times(step)` as `timing` rows (name "collectives") of `step` through
    `recorder` (the Watch calls this once per step, at the step's end). Never raises."""
    if tracker is None or tracker.failed is not None:
        return
    try:
        times = tracker.step_times(step)
        phases = list(times)
        recorder.submit("timing", {"name": [TIMING_NAME] * len(phases), "phase": phases,
                                   "ms": [times[p] for p in phases]}, len(phases), step=step)
    except Exception as exc:  # noqa: BLE001
        tracker._fail(exc)
