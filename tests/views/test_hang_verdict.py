"""The hang verdict (`views.hang`) on synthetic hung runs of 4 and 1,024 ranks, one per fault shape.

The oracle is what `tests.views.test_hang_runs` wrote: the culprit rank, its phase, module and frame,
and the collective #42 the others wait in.
"""
from __future__ import annotations

import faulthandler
import json
import os
import threading
from pathlib import Path

import pytest

from inspector.store.format import rank_dir_name
from inspector.store.heartbeat_format import HEARTBEAT_FILE
from inspector.store.heartbeat_read import parse_stack_dump, read_heartbeats
from inspector.views.hang import NAMED_MAX, hang_verdict, pick_frames, rank_list
from inspector.views.live import LiveRun
from tests.views.test_hang_runs import CULPRIT_AT, FAULTS, NOW, SEQ, WAIT_AT, culprit, write_hang_run

SIZES = (4, 1024)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    """Every fault shape at every size."""
    root = tmp_path_factory.mktemp("hangs")
    return {(f, n): write_hang_run(root / f"{f}-{n}", f, n) for f in FAULTS for n in SIZES}


def verdict(runs, fault: str, n: int, now: float = NOW):
    run = LiveRun(runs[fault, n])
    try:
        return hang_verdict(run, now), run
    finally:
        run.close()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("fault", ["healthy", "finished"])
def test_no_verdict_without_a_hang(runs, fault: str, n: int) -> None:
    v, _ = verdict(runs, fault, n)
    assert v is None


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("fault", ["missing", "data", "forward"])
def test_rank_missing_from_the_collective(runs, fault: str, n: int) -> None:
    """The culprit never entered #42; everyone else waits in it; its phase, module and frame are named."""
    v, run = verdict(runs, fault, n)
    bad, where = culprit(n), CULPRIT_AT[fault]
    others = [r for r in range(n) if r != bad]
    assert v is not None and not v.processes_gone
    assert sorted(v.stuck_ranks) == list(range(n))       # all stalled (the culprit too: no progress)
    [d] = v.desyncs
    assert (d.kind, d.group, d.seq, d.op, d.shapes) == ("missing", "default", SEQ, "all_reduce", [[4]])
    assert d.missing == [bad] and d.waiting == others
    first = v.named[0]
    assert first.rank == bad and (first.phase, first.module) == (where.phase, where.module)
    assert (first.frames[0].file, first.frames[0].line) == (where.file, where.line)
    assert first.dump == "stacks-0001.txt"
    assert v.headline.startswith(f"rank {bad} never entered all_reduce #{SEQ} that ranks {rank_list(others)} wait in")
    assert f"{os.path.basename(where.file)}:{where.line}" in v.headline and f"in {where.phase}" in v.headline
    assert len(v.named) <= NAMED_MAX


def test_waiting_rank_frames_skip_torch_and_inspector_but_keep_the_innermost(runs) -> None:
    v, _ = verdict(runs, "data", 4)
    waiting = next(s for s in v.named if s.rank == 0)
    assert waiting.phase == "collective" and waiting.collective.seq == SEQ
    assert (waiting.frames[0].file, waiting.frames[0].line) == (WAIT_AT.file, WAIT_AT.line)
    assert all("/torch/" not in f.file and "/inspector/" not in f.file for f in waiting.frames)
    assert waiting.innermost is not None and waiting.innermost.file.endswith("torch/distributed/distributed_c10d.py")


@pytest.mark.parametrize("n", SIZES)
def test_killed_rank(runs, n: int) -> None:
    """A rank that stopped rewriting its heartbeat is named as stopped reporting; the others wait for it."""
    v, _ = verdict(runs, "killed", n)
    bad = culprit(n)
    assert v is not None and not v.processes_gone
    states = {s.rank: s.state for s in v.stuck}
    assert states[bad] == "stopped reporting" and all(states[r] == "stalled" for r in range(n) if r != bad)
    assert v.named[0].rank == bad and v.named[0].phase == "forward" and v.named[0].frames == []
    assert v.headline.startswith(f"rank {bad} stopped reporting (killed or crashed?), last seen in forward (layers.0)")
    assert f"wait in all_reduce #{SEQ}" in v.headline


@pytest.mark.parametrize("n", SIZES)
def test_mismatch(runs, n: int) -> None:
    v, _ = verdict(runs, "mismatch", n)
    assert v is not None
    [d] = v.desyncs
    half = n // 2
    assert d.kind == "mismatch" and d.seq == SEQ and d.missing == []
    assert sorted((op, str(s), rs) for op, s, rs in d.variants) == [
        ("all_reduce", "[[4]]", list(range(half))), ("broadcast", "[[8]]", list(range(half, n)))]
    assert v.headline.startswith(f"mismatch at #{SEQ}:") and "all_reduce [4]" in v.headline \
        and "broadcast [8]" in v.headline


@pytest.mark.parametrize("n", SIZES)
def test_processes_gone_keeps_the_last_state(runs, n: int) -> None:
    """Every heartbeat is 2 minutes old: the verdict is read from the last state and says so."""
    v, _ = verdict(runs, "gone", n)
    bad = culprit(n)
    assert v is not None and v.processes_gone
    assert v.desyncs[0].missing == [bad]
    assert v.named[0].rank == bad and v.named[0].frames[0].line == CULPRIT_AT["data"].line
    assert "the processes are gone" in v.headline and f"rank {bad} never entered all_reduce #{SEQ}" in v.headline


def test_a_live_hang_becomes_a_verdict_as_heartbeats_age(runs, tmp_path: Path) -> None:
    """Same files, earlier clock: before anyone's hang_after_s the run is healthy; a killed rank turns
    into "stopped reporting" only 3 heartbeats after its last one."""
    path = write_hang_run(tmp_path / "k", "killed", 4)
    run = LiveRun(path)
    try:
        beats = run.heartbeats()
        last_bad = beats[1].time
        assert hang_verdict(run, last_bad + 2.9) is not None       # the others already stalled 30 s then
        early = hang_verdict(run, last_bad + 2.9)
        assert all(s.state == "stalled" for s in early.stuck) and 1 not in early.stuck_ranks
        later = hang_verdict(run, last_bad + 3.1 * beats[1].heartbeat_s)
        assert dict((s.rank, s.state) for s in later.stuck)[1] == "stopped reporting"
    finally:
        run.close()


def test_heartbeat_cache_follows_rewrites_and_survives_a_torn_file(tmp_path: Path) -> None:
    """A rewritten heartbeat is seen on the next poll; a torn one keeps the previous state and gives a
    one-line problem (never an exception)."""
    path = write_hang_run(tmp_path / "live", "healthy", 4)
    run = LiveRun(path)
    run.HEARTBEAT_POLL_S = 0.0
    try:
        assert run.heartbeats()[2].phase == "forward"
        v0 = run.version(LiveRun.HEARTBEAT_KIND)
        hb_path = path / rank_dir_name(2) / HEARTBEAT_FILE
        data = json.loads(hb_path.read_text())
        data.update(phase="optimizer", time=data["time"] + 1)
        hb_path.write_text(json.dumps(data))
        assert run.heartbeats()[2].phase == "optimizer" and run.version(LiveRun.HEARTBEAT_KIND) > v0
        hb_path.write_text(json.dumps(data)[:40])                 # torn
        assert run.heartbeats()[2].phase == "optimizer"
        [problem] = run.heartbeat_problems()
        assert problem.startswith("rank 2: heartbeat unreadable") and "\n" not in problem
        problems: list[str] = []
        assert sorted(read_heartbeats(path, problems)) == [0, 1, 3] and len(problems) == 1
    finally:
        run.close()


def test_only_named_ranks_dumps_are_read(runs) -> None:
    """At 1,024 ranks (all with a dump) only the ranks the verdict names have their dump parsed."""
    run = LiveRun(runs["data", 1024])
    try:
        v = hang_verdict(run, NOW)
        assert len(run._dumps) == len(v.named) <= NAMED_MAX
        assert hang_verdict(run, NOW, frames=False).named[0].frames == []
    finally:
        run.close()


def _blocked_in_user_code(ready: threading.Event, release: threading.Event) -> None:
    ready.set()
    release.wait()   # the line the dump must show


def test_parses_a_real_faulthandler_dump(tmp_path: Path) -> None:
    """A dump written by faulthandler itself: threads, the main one found by the header's id, frames
    with file, line and function, most recent first."""
    ready, release = threading.Event(), threading.Event()
    worker = threading.Thread(target=_blocked_in_user_code, args=(ready, release))
    worker.start()
    ready.wait()
    out = tmp_path / "stacks-0001.txt"
    try:
        with open(out, "w") as f:
            f.write(f"# rank: 0\n# phase: data\n# main_thread: 0x{worker.ident:016x}\n")
            f.flush()
            faulthandler.dump_traceback(f, all_threads=True)
    finally:
        release.set()
        worker.join()
    dump = parse_stack_dump(out.read_text())
    assert dump.header["phase"] == "data"
    assert len(dump.threads) >= 2 and sum(t.current for t in dump.threads) == 1
    main = dump.main_thread
    assert main is not None and int(main.id, 16) == worker.ident and not main.current
    user, innermost = pick_frames(main.frames)
    here = Path(__file__).read_text().splitlines()
    line = next(i for i, text in enumerate(here, 1) if "release.wait()   # the line" in text)
    assert (user[0].file, user[0].line, user[0].function) == (__file__, line, "_blocked_in_user_code")
    assert innermost is not None and innermost.file.endswith("threading.py")   # stdlib wait, kept as innermost


def _verdict_at(path: Path, now: float):
    run = LiveRun(path)
    try:
        return hang_verdict(run, now)
    finally:
        run.close()


@pytest.mark.parametrize("metric_first", [True, False])
def test_two_ranks_waiting_for_each_other_blame_the_one_that_skipped(tmp_path: Path, metric_first: bool) -> None:
    """Each of two ranks waits in a collective the other never entered: rank 0 in the metrics
    all_reduce #10, rank 1 in DDP's gradient all-reduce #20 on the default group. The program order seen
    the previous time round (#9 and #19, completed) says who skipped: when the metric came first, rank 1
    skipped it; when the gradients came first, rank 0 skipped them. Which of the pending ones was
    entered first is a race (here the gradients', 0.2 s earlier) and must not decide."""
    from inspector.store.heartbeat_format import CollectiveRef, GroupState, Heartbeat
    from inspector.store.run_dir import write_json_atomic

    path = write_hang_run(tmp_path / "x", "healthy", 2)
    t0 = NOW - 30
    metric = CollectiveRef("metrics", "all_reduce", 10, [[1]], "float32", entered=t0)
    grads = CollectiveRef("default", "ddp_allreduce", 20, [[1000]], "float32", entered=t0 - 0.2)
    first, second = (("metrics", "all_reduce", 9), ("default", "ddp_allreduce", 19))[::1 if metric_first else -1]
    recent = [CollectiveRef(g, op, seq, [[1]], "float32", entered=t0 - 2 + i, completed=t0 - 1.9 + i)
              for i, (g, op, seq) in enumerate((first, second))]
    for rank, coll, groups in (
            (0, metric, {"metrics": GroupState(10, 9, [0, 1]), "default": GroupState(19, 19, [0, 1])}),
            (1, grads, {"metrics": GroupState(9, 9, [0, 1]), "default": GroupState(20, 19, [0, 1])})):
        hb = Heartbeat(rank=rank, world_size=2, pid=10 + rank, host="h", time=NOW - 0.5, started=NOW - 99,
                       heartbeat_s=1.0, hang_after_s=5.0, step=5, phase="collective" if rank == 0 else "backward",
                       last_progress=coll.entered, collective=coll, groups=groups, recent=[*recent, coll])
        write_json_atomic(path / rank_dir_name(rank) / HEARTBEAT_FILE, hb.to_json())
    v = _verdict_at(path, NOW)
    if metric_first:
        assert [d.group for d in v.desyncs] == ["metrics", "default"]
        assert v.headline.startswith("rank 1 never entered all_reduce #10 (group metrics) that rank 0 waits in: "
                                     "rank 1 is in backward")
    else:
        assert [d.group for d in v.desyncs] == ["default", "metrics"]
        assert v.headline.startswith("rank 0 never entered ddp_allreduce #20 that rank 1 waits in: "
                                     "rank 0 is in all_reduce #10")


def test_library_frames() -> None:
    """torch/, the inspector package and the standard library are library frames; a user's own
    directory called "inspector" (holding none of the package's modules) is not."""
    from inspector.store.heartbeat_read import StackFrame
    from inspector.views.hang import is_library_frame

    lib = ["/v/site-packages/torch/nn/modules/module.py", "/v/site-packages/inspector/watch.py",
           "/src/deepseek/inspector/watchdog/progress.py", "/usr/lib/python3.11/threading.py", "<frozen runpy>"]
    user = ["/home/u/inspector/my_train.py", "/home/u/train.py", "/v/lib/python3.11/site-packages/mylib/x.py"]
    assert [is_library_frame(StackFrame(f, 1, "f")) for f in lib] == [True] * len(lib)
    assert [is_library_frame(StackFrame(f, 1, "f")) for f in user] == [False] * len(user)


def test_killed_rank_told_from_the_survivor_that_saw_its_collective_fail(tmp_path: Path) -> None:
    """Rank 1 was SIGKILLed; rank 0's gradient all-reduce then raised (the peer's connection closed) and
    the launcher killed rank 0 too, a moment later: both heartbeats stopped together. The survivor's
    failed collective singles rank 1 out; without it nothing would (both "stopped together")."""
    from inspector.store.heartbeat_format import CollectiveRef, GroupState, Heartbeat
    from inspector.store.run_dir import write_json_atomic

    path = write_hang_run(tmp_path / "x", "healthy", 2)
    t0 = NOW - 60
    error = "RuntimeError: Connection closed by peer [127.0.0.1]:4242"
    for rank in (0, 1):
        coll = CollectiveRef("default", "ddp_allreduce", 20, [[1000]], "float32", entered=t0,
                             error=error if rank == 0 else "")
        hb = Heartbeat(rank=rank, world_size=2, pid=10 + rank, host="h", time=t0 + 0.3 * rank, started=NOW - 99,
                       heartbeat_s=1.0, hang_after_s=5.0, step=5, phase="backward", last_progress=t0,
                       collective=coll if rank == 0 else None, recent=[coll],
                       groups={"default": GroupState(20, 19, [0, 1])})
        write_json_atomic(path / rank_dir_name(rank) / HEARTBEAT_FILE, hb.to_json())
    v = _verdict_at(path, NOW)
    assert v.processes_gone
    assert v.headline.startswith("rank 1 stopped reporting (killed or crashed?), last seen in backward at step 5; "
                                 f"rank 0 saw ddp_allreduce #20 fail ({error})"), v.headline
