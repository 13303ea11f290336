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


def test_inference_run_header_gives_generated_tokens_per_second(tmp_path):
    """A run recorded in inference mode has no tokens_per_s scalar: the header says generated
    tokens/s, counting every output token the scheduler produced (first tokens included) over the
    iterations' wall time, which the test's own clock bounds from above."""
    import time

    import torch

    import inspector
    from inspector_engine.config import get_config
    from inspector_engine.inference import BatchScheduler
    from inspector_engine.model import Transformer

    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    sched = BatchScheduler(model, max_batch_size=2, max_batch_tokens=64)
    w = inspector.watch(model, tmp_path / "gen", mode="inference", probes=[], hang_after_s=None)
    driver = w.observe(sched)
    for prompt, n in (([5, 6, 7], 6), ([1, 2, 3, 4], 4), ([9, 9], 5)):
        sched.submit(prompt, n)
    t0 = time.perf_counter()
    done = sched.run()
    wall = time.perf_counter() - t0
    driver.remove()
    w.close()
    run = open_live(tmp_path / "gen")
    h = run_header(run)
    produced = sum(len(r.output) for r in done)
    iteration_s = run.frame("inference_iteration")["ms"].sum() / 1e3
    assert h.tokens_label == "gen tok/s" and f"{h.tokens_per_s:,.0f} gen tok/s" in h.line()
    assert h.tokens_per_s * iteration_s == pytest.approx(produced)
    assert h.tokens_per_s >= produced / wall
    assert h.elapsed_s > 0
    run.close()
