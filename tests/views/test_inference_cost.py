"""The Inspector's own cost on sampled inference iterations, measured from the iteration rows:
planted in a run written through the Recorder (attention every 16th iteration adding 0.4 ms to it
and 0.6 ms to the next, expert load at 8 of 16 adding 0.9 ms), over a slow drift of iteration time
and a prefill now and then; read back by the view and printed by `inspector summary`."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from inspector.schema import EXPERT_LOAD_INFERENCE, INFERENCE_ITERATION
from inspector.store.recorder import Recorder
from inspector.summary_report import print_inference
from inspector.views.inference import inference_summary, iterations_frame
from inspector.views.inference_cost import cost_text, sampled_cost
from inspector.views.live import LiveRun

STEPS = 300


def _write(path: Path) -> None:
    with Recorder(path, name="cost", heartbeat_s=0) as rec:
        for step in range(STEPS):
            prefill = step % 50 == 0
            ms = 5.0 + step * 0.01 + (0.4 if step % 16 == 0 else 0) + (0.6 if step % 16 == 1 else 0) \
                + (0.9 if step % 16 == 8 else 0) + (3.0 if prefill else 0)
            rec.submit(INFERENCE_ITERATION, {"ms": ms, "batch_size": 4, "prompt_tokens": 64 if prefill else 0,
                                             "generation_tokens": 0 if prefill else 4}, 1, step)
            if step % 16 == 0:
                rec.attention_map("layers.0.attn", np.full((1, 1, 8), 0.125, dtype=np.float32), layer=0, step=step)
            if step % 16 == 8:
                rec.submit(EXPERT_LOAD_INFERENCE, {"name": ["layers.1.ffn.router"], "layer": [1],
                                                   "counts": [np.arange(8)], "stage": ["decode"]}, 1, step)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> LiveRun:
    path = tmp_path_factory.mktemp("cost") / "run"
    _write(path)
    return LiveRun(path)


def test_planted_costs_are_measured_per_record_kind(run: LiveRun) -> None:
    costs = {c.what: c for c in sampled_cost(run, iterations_frame(run))}
    assert set(costs) == {"attention maps", "expert load"}
    att, exp = costs["attention maps"], costs["expert load"]
    assert att.extra_ms == pytest.approx(1.0, abs=1e-6) and exp.extra_ms == pytest.approx(0.9, abs=1e-6)
    assert att.every == exp.every == 16
    assert att.iterations >= 12 and exp.iterations >= 12      # those next to a prefill are left out
    median = np.median([5.0 + s * 0.01 for s in range(STEPS)])
    assert att.share == pytest.approx(1.0 / (16 * median), rel=0.05)


def test_inspector_summary_says_what_its_own_work_costs(run: LiveRun) -> None:
    out = io.StringIO()
    print_inference(inference_summary(run), Console(file=out, width=200))
    text = out.getvalue()
    assert "the Inspector's own sampled work: attention maps +1.00 ms" in text
    assert "expert load +0.90 ms" in text and "included in the latencies above" in text


def test_a_run_without_sampled_records_costs_nothing(tmp_path: Path) -> None:
    with Recorder(tmp_path / "run", name="plain", heartbeat_s=0) as rec:
        for step in range(20):
            rec.submit(INFERENCE_ITERATION, {"ms": 5.0, "batch_size": 1, "prompt_tokens": 0,
                                             "generation_tokens": 1}, 1, step)
    run = LiveRun(tmp_path / "run")
    assert sampled_cost(run, iterations_frame(run)) == []


def test_records_on_the_same_iterations_are_one_cost(tmp_path: Path) -> None:
    """Runs recorded before the expert offset have both records on every 16th iteration: their cost
    is one, not counted twice."""
    with Recorder(tmp_path / "run", name="both", heartbeat_s=0) as rec:
        for step in range(120):
            rec.submit(INFERENCE_ITERATION, {"ms": 5.0 + (1.5 if step % 16 == 0 else 0), "batch_size": 2,
                                             "prompt_tokens": 0, "generation_tokens": 2}, 1, step)
            if step % 16 == 0:
                rec.attention_map("layers.0.attn", np.full((1, 1, 4), 0.25, dtype=np.float32), layer=0, step=step)
                rec.submit(EXPERT_LOAD_INFERENCE, {"name": ["r"], "layer": [1], "counts": [np.arange(4)],
                                                   "stage": ["decode"]}, 1, step)
    run = LiveRun(tmp_path / "run")
    [cost] = sampled_cost(run, iterations_frame(run))
    assert cost.what == "attention maps + expert load" and cost.extra_ms == pytest.approx(1.5)


def _write_periods(path: Path, attention: int, expert_at: int, steps: int = 320) -> None:
    """Attention every `attention` iterations (+0.5 ms to it, +0.3 ms to the next), expert load at
    `expert_at` of 16 (+0.8 ms), over a slow drift."""
    with Recorder(path, name="dense", heartbeat_s=0) as rec:
        for step in range(steps):
            ms = 5.0 + step * 0.002 + (0.5 if step % attention == 0 else 0) + (0.3 if step % attention == 1 else 0) \
                + (0.8 if step % 16 == expert_at else 0)
            rec.submit(INFERENCE_ITERATION, {"ms": ms, "batch_size": 2, "prompt_tokens": 0, "generation_tokens": 2},
                       1, step)
            if step % attention == 0:
                rec.attention_map("layers.0.attn", np.full((1, 1, 4), 0.25, dtype=np.float32), layer=0, step=step)
            if step % 16 == expert_at:
                rec.submit(EXPERT_LOAD_INFERENCE, {"name": ["r"], "layer": [1], "counts": [np.arange(4)],
                                                   "stage": ["decode"]}, 1, step)


def test_dense_attention_records_measured_against_the_nearest_clean_iterations(tmp_path: Path) -> None:
    """Attention every 4th iteration (the sample run's choice) leaves the expert record (at 2 of 16)
    no recorded-free iteration right beside it: the nearest clean ones a few iterations away serve."""
    _write_periods(tmp_path / "run", attention=4, expert_at=2)
    run = LiveRun(tmp_path / "run")
    costs = {c.what: c for c in sampled_cost(run, iterations_frame(run))}
    assert costs["attention maps"].extra_ms == pytest.approx(0.8, abs=0.02)
    assert costs["expert load"].extra_ms == pytest.approx(0.8, abs=0.02) and costs["expert load"].iterations >= 18


def test_a_record_without_clean_neighbours_is_said_unmeasured(tmp_path: Path) -> None:
    _write_periods(tmp_path / "run", attention=2, expert_at=3)       # every other iteration carries a record
    run = LiveRun(tmp_path / "run")
    costs = sampled_cost(run, iterations_frame(run))
    assert {c.what for c in costs} == {"attention maps", "expert load"} and all(c.iterations == 0 for c in costs)
    assert cost_text(costs) == "attention maps (1 in 2), expert load (1 in 16) not measured: other records beside it"
