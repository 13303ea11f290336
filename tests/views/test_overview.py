"""The run header: status, step, ranks, elapsed, tokens/s."""
from __future__ import annotations

import pytest

from inspector.store.recorder import Recorder
from inspector.views import open_live
from inspector.views.overview import eval_loss_name, format_duration, run_header
from tests.synthetic_run import SyntheticSpec, write_synthetic_run


def test_header_of_finished_multirank_run(tmp_path):
    write_synthetic_run(tmp_path, SyntheticSpec(steps=30, ranks=2, slow_rank=1))
    run = open_live(tmp_path)
    h = run_header(run)
    assert (h.name, h.status, h.step, h.ranks, h.world_size) == ("synthetic", "finished", 29, 2, 2)
    assert h.tokens_per_s == pytest.approx(1000.0 + 1000.0 / 3)     # sum over ranks of the last values
    wall = run.reader.to_pandas("scalar")["wall_time"].max()
    assert h.elapsed_s == pytest.approx(wall - run.meta.created)
    assert "finished · step 29 · 2/2 ranks" in h.line()
    run.close()


def test_crashed_run_and_missing_tokens(tmp_path):
    write_synthetic_run(tmp_path, SyntheticSpec(steps=10, close=False))
    run = open_live(tmp_path)
    assert run_header(run).status == "crashed"
    run.close()
    other = tmp_path / "plain"
    with Recorder(other, name="plain") as rec:
        rec.scalars({"loss": 1.0, "eval/val_loss": 2.0}, step=0)
    run = open_live(other)
    h = run_header(run)
    assert h.tokens_per_s is None and "tok/s N/A" in h.line()
    assert eval_loss_name(run) == "eval/val_loss"
    run.close()


def test_format_duration():
    assert [format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m 05s", "1h 02m"]
