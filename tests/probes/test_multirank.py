"""A real 2-process torchrun (gloo) run of the engine records both ranks with every probe."""
from __future__ import annotations

from pathlib import Path

import pytest

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
