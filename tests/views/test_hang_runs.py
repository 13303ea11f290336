"""Synthetic hung runs: heartbeat.json and stacks-NNNN.txt written with the watchdog's format module.

`write_hang_run(path, fault, ranks, now)` writes one fault shape (see `FAULTS`) for any number of
ranks: the culprit is rank `culprit(ranks)`; the other ranks wait in collective #42 of the default
group. Small runs get real records through the Recorder (so LiveRun, the TUI and the dashboard
open them as runs); large ones only run.json and the rank directories. The tests at the bottom
check that the files read back as written (the oracle the verdict tests compare with).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from inspector.schema import RunMeta
from inspector.store.format import RUN_META_FILE, rank_dir_name
from inspector.store.heartbeat_format import (HEARTBEAT_FILE, CollectiveRef, GroupState, Heartbeat, stacks_file_name)
from inspector.store.heartbeat_read import list_stack_dumps, read_heartbeats
from inspector.store.run_dir import write_json_atomic

FAULTS = ("healthy", "finished", "missing", "data", "forward", "killed", "mismatch", "gone")
NOW = 1_800_000_000.0
"""The clock the runs are written for (the TUI tests' frozen clock)."""
SEQ = 42
HANG_AFTER, BEAT = 5.0, 1.0
MAIN_ID = 0x00007F00DEADBEEF
WATCHDOG_ID = 0x00007F00CAFEF00D


@dataclass(frozen=True)
class Where:
    """A culprit's stuck place: phase, module and the user's frame."""

    phase: str
    module: str
    file: str
    line: int
    function: str


CULPRIT_AT = {
    "missing": Where("user", "", "/home/u/train.py", 88, "log_metrics"),
    "data": Where("data", "loader", "/home/u/worker.py", 57, "__getitem__"),
    "forward": Where("forward", "layers.1.attn", "/home/u/model.py", 120, "forward"),
    "killed": Where("forward", "layers.0", "/home/u/model.py", 64, "forward"),
}
WAIT_AT = Where("collective", "", "/home/u/train.py", 71, "train_step")


def culprit(ranks: int) -> int:
    """The faulty rank of a run of `ranks` ranks."""
    return 1 if ranks <= 4 else ranks // 2 + 5


def _dump_text(rank: int, ranks: int, hb: Heartbeat, frames_main: list[tuple[str, int, str]]) -> str:
    coll = json.dumps(hb.collective.to_json()) if hb.collective else "null"
    header = {"rank": rank, "world_size": ranks, "pid": hb.pid, "host": hb.host, "time": hb.time, "step": hb.step,
              "phase": hb.phase, "module": hb.module, "stalled_s": hb.stalled_s, "collective": coll,
              "main_thread": f"0x{MAIN_ID:016x}"}
    lines = [f"# {k}: {v}" for k, v in header.items()]
    lines.append(f"Current thread 0x{WATCHDOG_ID:016x} (most recent call first):")
    lines += ['  File "/venv/site-packages/inspector/watchdog/watchdog.py", line 90 in _dump',
              '  File "/usr/lib/python3.11/threading.py", line 982 in run', ""]
    lines.append(f"Thread 0x{MAIN_ID:016x} (most recent call first):")
    lines += [f'  File "{f}", line {n} in {fn}' for f, n, fn in frames_main]
    return "\n".join(lines) + "\n"


def _main_frames(w: Where, waiting: bool) -> list[tuple[str, int, str]]:
    inner: list[tuple[str, int, str]] = []
    if waiting:
        inner = [("/venv/site-packages/torch/distributed/distributed_c10d.py", 2501, "all_reduce"),
                 ("/venv/site-packages/inspector/watchdog/collectives.py", 77, "wrapped")]
    elif w.phase == "data":
        inner = []
    user = [(w.file, w.line, w.function)]
    outer = [("/venv/site-packages/torch/utils/data/dataloader.py", 701, "__next__"),
             ("/venv/site-packages/inspector/watch.py", 300, "__next__")] if w.phase == "data" else \
        [("/venv/site-packages/torch/nn/modules/module.py", 1750, "_call_impl")] if w.phase == "forward" else []
    return inner + user + outer + [("/home/u/train.py", 140, "main"), ("/home/u/train.py", 150, "<module>")]


def _beat(rank: int, ranks: int, *, time: float, last_progress: float, phase: str, module: str = "",
          collective: CollectiveRef | None = None, entered: int = SEQ - 1, completed: int = SEQ - 1,
          closed: bool = False, step: int = 7) -> Heartbeat:
    recent = [CollectiveRef("default", "all_reduce", s, [[4]], "float32", entered=time - 10, completed=time - 9)
              for s in range(max(1, completed - 3), completed + 1)]
    return Heartbeat(rank=rank, world_size=ranks, pid=1000 + rank, host=f"node{rank // 8}", time=time,
                     started=NOW - 600, heartbeat_s=BEAT, hang_after_s=HANG_AFTER, step=step, phase=phase,
                     module=module, phase_since=last_progress, last_progress=last_progress, collective=collective,
                     groups={"default": GroupState(entered=entered, completed=completed, ranks=None)},
                     recent=recent, closed=closed)


def _write_meta(path: Path, ranks: int, records: bool, closed: bool) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if records:
        from inspector.store.recorder import Recorder

        for r in range(ranks):
            rec = Recorder(path, rank=r, world_size=ranks, name="hang", flush_interval=0.2)
            for s in range(8):
                rec.scalars({"loss": 2.0 - 0.1 * s, "tokens_per_s": 1000.0}, step=s)
            rec.close()
            if not closed:      # the processes never closed: a hung (or killed) job
                (path / rank_dir_name(r) / "closed.json").unlink(missing_ok=True)
    else:
        write_json_atomic(path / RUN_META_FILE, RunMeta(name="hang", world_size=ranks, created=NOW - 600).to_dict())
        for r in range(ranks):
            (path / rank_dir_name(r)).mkdir(exist_ok=True)


def write_hang_run(path: str | Path, fault: str, ranks: int = 4, *, records: bool | None = None,
                   now: float = NOW, dumps: bool = True) -> Path:
    """Write `fault` (one of FAULTS) for `ranks` ranks, as seen at `now`; returns `path`. Writing
    again over the same path replaces the heartbeats (a live job that changes state); `dumps=False`
    leaves the stack dump files as they are (heartbeats still name them)."""
    assert fault in FAULTS, fault
    path = Path(path)
    if not (path / RUN_META_FILE).exists():
        _write_meta(path, ranks, ranks <= 8 if records is None else records, closed=fault == "finished")
    bad = culprit(ranks)
    last_beat = now - 120.0 if fault == "gone" else now - 0.5   # "gone": every process killed 2 minutes ago
    stalled_since = last_beat - 30.0
    for r in range(ranks):
        waiting = CollectiveRef("default", "all_reduce", SEQ, [[4]], "float32", entered=stalled_since)
        dump_frames = None
        if fault == "healthy":
            hb = _beat(r, ranks, time=now - 0.2, last_progress=now - 0.4, phase="forward", module="layers.0",
                       entered=SEQ - (r % 2), completed=SEQ - 1)
        elif fault == "finished":
            hb = _beat(r, ranks, time=now - 900, last_progress=now - 900, phase="closed", closed=True,
                       entered=SEQ, completed=SEQ)
        elif fault == "mismatch":
            other = r >= ranks // 2
            coll = CollectiveRef("default", "broadcast" if other else "all_reduce", SEQ, [[8]] if other else [[4]],
                                 "float32", entered=stalled_since)
            hb = _beat(r, ranks, time=last_beat, last_progress=stalled_since, phase="collective", collective=coll,
                       entered=SEQ)
            dump_frames = _main_frames(WAIT_AT, True)
        elif r != bad:
            hb = _beat(r, ranks, time=last_beat, last_progress=stalled_since,
                       phase="collective", collective=waiting, entered=SEQ)
            dump_frames = _main_frames(WAIT_AT, True)
        else:
            w = CULPRIT_AT.get(fault, CULPRIT_AT["data"])
            if fault == "killed":      # killed at its last progress, 3 heartbeats later nothing
                hb = _beat(r, ranks, time=stalled_since, last_progress=stalled_since - 0.3, phase=w.phase,
                           module=w.module)
            else:
                hb = _beat(r, ranks, time=last_beat, last_progress=stalled_since - 2.0, phase=w.phase, module=w.module)
                dump_frames = _main_frames(w, False)
        rank_dir = path / rank_dir_name(r)
        if dump_frames is not None:
            name = stacks_file_name(1)
            hb.dumps = [name]
            if dumps or not (rank_dir / name).exists():
                (rank_dir / name).write_text(_dump_text(r, ranks, hb, dump_frames))
        write_json_atomic(rank_dir / HEARTBEAT_FILE, hb.to_json())
        os.utime(rank_dir / HEARTBEAT_FILE, (hb.time, hb.time))
    return path


def test_heartbeats_read_back_as_written(tmp_path: Path) -> None:
    """Every rank's heartbeat reads back equal to what was written; dumps are listed per rank."""
    run = write_hang_run(tmp_path / "run", "data", 4)
    beats = read_heartbeats(run)
    assert sorted(beats) == [0, 1, 2, 3]
    raw = json.loads((run / rank_dir_name(1) / HEARTBEAT_FILE).read_text())
    assert beats[1].to_json() == raw
    assert beats[1].phase == "data" and beats[0].collective.seq == SEQ
    assert [p.name for p in list_stack_dumps(run, 1)] == ["stacks-0001.txt"]
    assert list_stack_dumps(run, 7) == []
