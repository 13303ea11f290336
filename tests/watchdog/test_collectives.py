"""The collective tracker on 2 real gloo ranks (`collectives_worker.py`): sequence numbers, ops,
shapes and dtypes, async completion, the phase during a blocking call, communication wait, FSDP2's
collectives, DDP's recording comm hook (bit-identical to DDP without it) and uninstall."""
from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.watchdog import collectives_worker as worker

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of the 2 ranks saw (the worker's pickles), every process killed at the end."""
    out = tmp_path_factory.mktemp("collectives")
    port = str(_free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.watchdog.collectives_worker", str(r), str(out), port],
                              cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    try:
        deadline = time.monotonic() + 240
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        logs = [p.stdout.read() if p.stdout else "" for p in procs]
        assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
        return [pickle.loads((out / f"rank-{r}.pkl").read_bytes()) for r in (0, 1)]
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def test_sequence_numbers_ops_shapes_dtypes(ranks: list[dict[str, Any]]) -> None:
    """Per group, 1-based sequence numbers equal on both ranks; op, shapes and dtype as called."""
    expected = [("default", "all_reduce", 1, [[4]], "float32"), ("default", "all_gather", 2, [[2, 3]], "float64"),
                ("sub", "all_gather_into_tensor", 1, [[3]], "int64"), ("default", "broadcast", 3, [[5]], "bfloat16"),
                ("default", "barrier", 4, [], ""), ("default", "all_reduce", 5, [[7, 2]], "float32")]
    for seen in ranks:
        basic = seen["basic"]
        sub = basic["sub_name"]
        got = [("sub" if r.group == sub else r.group, r.op, r.seq, r.shapes, r.dtype) for r in basic["recent"]]
        assert got == expected
        assert sub != "default"
        assert {k: (g.entered, g.completed, g.ranks) for k, g in basic["groups"].items()} == {
            "default": (5, 5, [0, 1]), sub: (1, 1, [0, 1])}
        assert all(r.completed is not None and r.completed >= r.entered for r in basic["recent"])
        assert basic["current"] is None
        assert basic["results"][0] == [3.0] * 4           # the wrapped collectives still compute


def test_phase_is_collective_inside_a_blocking_call(ranks: list[dict[str, Any]]) -> None:
    """While a blocking collective runs, Progress says "collective" and holds it; async calls do not
    enter the phase; afterwards the phase before the call is back."""
    for seen in ranks:
        spy = seen["basic"]["spy"]
        assert spy[:5] == [("all_reduce", "collective", 1), ("all_gather", "collective", 2),
                           ("all_gather_into_tensor", "collective", 1), ("broadcast", "collective", 3),
                           ("barrier", "collective", 4)]
        assert spy[5] == ("all_reduce", "user", None)       # async_op=True
        assert seen["basic"]["phase_after"] == "user"


def test_trackers_share_the_wrappers(ranks: list[dict[str, Any]]) -> None:
    """A second tracker in the process records the same calls; uninstalling it keeps the first's
    wrappers; the last uninstall restores the original functions."""
    for seen in ranks:
        assert seen["wrapped"] and seen["wrapped_after_second"]
        assert seen["second_seqs"] == [1, 2, 1, 3, 4, 5]
        assert seen["restored"]
        assert seen["failed"] is None


def test_blocking_wait_is_the_late_ranks_delay(ranks: list[dict[str, Any]]) -> None:
    """Rank 1 enters an all_reduce SLEEP_S late: rank 0's comm_wait holds most of that, in the phase
    it interrupted (forward); rank 1 barely waits."""
    w0, w1 = ranks[0]["wait"], ranks[1]["wait"]
    assert w0["comm_wait"] == w0["comm_wait_forward"]
    assert w0["comm_wait"] >= 0.5 * worker.SLEEP_S * 1000
    assert w1["comm_wait"] < w0["comm_wait"] / 2


def test_ddp_hook_is_bit_identical_and_records_buckets(ranks: list[dict[str, Any]]) -> None:
    """Parameters after DDP_STEPS steps equal DDP without the hook bit for bit; every bucket recorded
    once (same seq on both ranks), completed."""
    refs = [seen["ddp"]["ddp_refs"] for seen in ranks]
    for seen in ranks:
        ddp = seen["ddp"]
        assert ddp["why"] is None
        assert ddp["bit_identical"]
        assert len(ddp["times"]) == worker.DDP_STEPS
        assert all(set(t) == {"comm_wait", "comm_wait_backward"} for t in ddp["times"])
    assert refs[0] and [r[:4] for r in refs[0]] == [r[:4] for r in refs[1]]
    assert all(r[4] for r in refs[0] + refs[1])
    seqs = [r[1] for r in refs[0]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    n_params = (16 * 64 + 64) + (64 * 64 + 64) + (64 + 1)          # every gradient, once per step
    assert sum(r[2][0][0] for r in refs[0]) == worker.DDP_STEPS * n_params


def test_ddp_wait_lands_on_the_fast_rank(ranks: list[dict[str, Any]]) -> None:
    """Rank 1 sleeps SLEEP_S/2 inside backward every step: rank 0's backward comm wait holds it, rank 1's
    does not (the waiting rank is the victim, not the cause)."""
    slow0, slow1 = ranks[0]["ddp_slow"], ranks[1]["ddp_slow"]
    for t0, t1 in zip(slow0[1:], slow1[1:]):
        assert t0["comm_wait_backward"] >= 0.5 * worker.SLEEP_S / 2 * 1000
        assert t1["comm_wait_backward"] < t0["comm_wait_backward"] / 2


def test_fsdp2_collectives_are_seen(ranks: list[dict[str, Any]]) -> None:
    """FSDP2's all-gathers and reduce-scatters (through `torch.distributed`) are recorded, the same
    on both ranks."""
    fsdp = [seen["fsdp"] for seen in ranks]
    assert all(isinstance(f, list) for f in fsdp), fsdp
    ops = [r[1] for r in fsdp[0]]
    assert {"all_gather_single", "reduce_scatter_single"} <= set(ops) or \
        {"all_gather_into_tensor", "reduce_scatter_tensor"} <= set(ops)
    assert fsdp[0] == fsdp[1]
    assert all(r[5] for r in fsdp[0])
