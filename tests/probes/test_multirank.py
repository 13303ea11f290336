"""A real 2-process torchrun (gloo) run of the engine records both ranks with every probe."""
from __future__ import annotations

import multiprocessing as mp
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

import inspector
from tests.conftest import inspector_cli


@pytest.mark.multiproc
def test_two_rank_torchrun_records_both_ranks(tmp_path: Path) -> None:
    run = tmp_path / "mr"
    res = inspector_cli("demo", "--config", "debug", "--steps", "6", "--ranks", "2", "--no-dash", "--out", str(run),
                        "--batch-size", "2", "--seq-len", "32", "--no-progress", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r = inspector.open_run(run)
    assert r.ranks == [0, 1] and r.meta.world_size == 2 and r.status() == "finished"
    by_rank = {rank: set() for rank in r.ranks}
    for kind in r.kinds():
        table = r.read_table(kind, columns=["step"])
        for rank in set(table.column("rank").to_pylist()):
            by_rank[rank].add(kind)
    assert "scalar" in by_rank[0]
    assert by_rank[0] == by_rank[1]
    loss = r.to_pandas("scalar", names=["loss"])
    assert sorted(loss.groupby("rank")["step"].apply(list).tolist()) == [list(range(6))] * 2


def _spawned_worker(rank: int, world_size: int, run: str, rendezvous: str) -> None:
    """One `torch.multiprocessing.spawn` worker: a gloo group (rank passed in, no RANK env), 3 watched steps."""
    import torch.distributed as dist
    from torch import nn

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, init_method=rendezvous)
    try:
        torch.manual_seed(rank)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with inspector.watch(model, run, optimizer=opt, probes=["gradients", "anomalies"]) as w:
            for _ in range(3):
                opt.zero_grad()
                loss = model(torch.randn(2, 4)).pow(2).mean()
                loss.backward()
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                opt.step()
                w.step(loss=loss)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.multiproc
def test_spawned_workers_without_rank_env_take_their_rank_from_the_process_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.multiprocessing as mp

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        monkeypatch.delenv(key, raising=False)
    run = tmp_path / "spawned"
    mp.spawn(_spawned_worker, args=(2, str(run), f"file://{tmp_path / 'rendezvous'}"), nprocs=2, join=True)
    assert sorted(p.name for p in run.glob("rank-*")) == ["rank-00000", "rank-00001"]
    r = inspector.open_run(run)
    assert r.ranks == [0, 1] and r.meta.world_size == 2
    loss = r.to_pandas("scalar", names=["loss"])
    assert loss.groupby("rank")["step"].apply(list).to_dict() == {0: [0, 1, 2], 1: [0, 1, 2]}


def test_detect_prefers_an_initialised_process_group_over_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    from inspector.distenv import DistEnv

    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert DistEnv.detect(env) == DistEnv(rank=3, local_rank=1, world_size=4)  # no group: the environment
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'rdzv'}")
    try:
        assert DistEnv.detect(env) == DistEnv(rank=0, local_rank=1, world_size=1)
        assert DistEnv.detect({}) == DistEnv(rank=0, local_rank=0, world_size=1)
        monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 1 / 0)  # a broken torch never raises
        assert DistEnv.detect(env) == DistEnv(rank=3, local_rank=1, world_size=4)
    finally:
        monkeypatch.undo()
        dist.destroy_process_group()


def test_detect_does_not_import_torch(python: str) -> None:
    import subprocess

    code = ("import sys; from inspector.distenv import DistEnv; d = DistEnv.detect({'RANK': '2', 'WORLD_SIZE': '3'}); "
            "assert 'torch' not in sys.modules, 'torch imported'; assert (d.rank, d.world_size) == (2, 3)")
    res = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


# --- stragglers on a real 4-rank torchrun, quiet and on a busy machine -------------------------------

STEPS = 24
SLOW_RANK = 2
LOAD = 4
"""Busy-loop processes competing with the 4 ranks for the machine (2 cores here: 8 runnable processes)."""


def _spin() -> None:
    while True:
        pass


@contextmanager
def busy_loops(n: int) -> Iterator[None]:
    """`n` processes spinning on the CPU for the duration (the competing load)."""
    procs = [mp.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()


def _demo(out: Path, slow_rank: int | None) -> Path:
    slow = ["--slow-rank", str(slow_rank)] if slow_rank is not None else []
    res = inspector_cli("demo", "--config", "debug", "--steps", str(STEPS), "--ranks", "4", *slow, "--batch-size", "4",
                        "--seq-len", "64", "--out", str(out), "--no-progress", "--no-dash", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def straggler_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Healthy quiet; healthy and rank-2-slowed (the demo's 50 ms) under `LOAD` busy loops."""
    root = tmp_path_factory.mktemp("stragglers")
    runs = {"quiet-healthy": _demo(root / "quiet-healthy", None)}
    with busy_loops(LOAD):
        runs["busy-healthy"] = _demo(root / "busy-healthy", None)
        runs["busy-slow"] = _demo(root / "busy-slow", SLOW_RANK)
    return runs


@pytest.mark.multiproc
@pytest.mark.parametrize("name", ["quiet-healthy", "busy-healthy"])
def test_healthy_four_ranks_have_no_straggler(straggler_runs, name: str) -> None:
    from inspector.views.live import open_live
    from inspector.views.ranks import rank_table

    run = open_live(straggler_runs[name])
    table = rank_table(run)
    assert table["rank"].tolist() == [0, 1, 2, 3]
    assert not table["straggler"].any(), _verdicts(run)


def _verdicts(run) -> str:
    """Every straggler measure's statistics per rank (what a failure has to show to be diagnosed)."""
    from inspector.views.ranks import measure_verdicts, straggler_reasons

    lines = [f"reasons: {straggler_reasons(run)}"]
    for label, bar, verdicts in measure_verdicts(run):
        lines += [f"{label} {bar}"] + [f"  rank {r}: {v}" for r, v in zip(run.ranks(), verdicts)]
    return "\n".join(lines)


@pytest.mark.multiproc
def test_slowed_rank_is_the_only_straggler_on_a_busy_machine(straggler_runs) -> None:
    from inspector.views.live import open_live
    from inspector.views.ranks import rank_table

    run = open_live(straggler_runs["busy-slow"])
    table = rank_table(run).set_index("rank")
    assert table["straggler"].tolist() == [r == SLOW_RANK for r in range(4)], _verdicts(run)
    reason = table.loc[SLOW_RANK, "straggler_reason"]
    assert reason.startswith("data ") and "; data (waits taken out) " in reason   # DDP's waits are recorded
