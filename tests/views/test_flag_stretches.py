"""Starved and hot experts at any step, from flag changes (`views.flag_stretches`) and from the run.

Oracles: `stretch_at_end` over every recorded row up to the step (the tail-free definition), on
random flags, and on real runs written by the Recorder (one rank, and two ranks whose counts are
summed) where experts stay hot or empty for far longer than the tail the views read first."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspector.store.recorder import Recorder
from inspector.views import summary as S
from inspector.views.experts import ALL_RANKS
from inspector.views.flag_stretches import FlagChanges
from inspector.views.live import LiveRun


def test_flag_changes_answer_every_row_like_a_pass_over_the_rows_before_it() -> None:
    rng = np.random.default_rng(3)
    found = 0
    for _ in range(60):
        n, e = int(rng.integers(1, 300)), int(rng.integers(1, 9))
        steps = np.sort(rng.choice(np.arange(0, 3000), n, replace=False))
        flags = rng.random((n, e)) < rng.uniform(0.05, 0.95)
        for x in range(e):                          # long stretches as well as noise
            if rng.random() < 0.4:
                a = int(rng.integers(0, n))
                flags[a:a + int(rng.integers(1, n + 1)), x] = True
        changes = FlagChanges.of(steps, flags)
        assert changes.due_at(int(steps[0]) - 1, S.STARVED_STEPS, S.STARVED_MIN_SAMPLES) == {}
        for i in range(n):
            expected = S.stretch_at_end(steps[:i + 1], flags[:i + 1])
            assert changes.due_at(int(steps[i]), S.STARVED_STEPS, S.STARVED_MIN_SAMPLES) == expected
            found += bool(expected)
    assert found > 500


LAYERS, EXPERTS, RECORDED, EVERY = 3, 16, 400, 5


def _counts(rng: np.random.Generator) -> np.ndarray:
    """[recorded, layers, experts]: layer 3 has expert 2 hot throughout, layer 4 expert 7 empty from
    recorded row 30 on and expert 9 hot from row 100 to 350, layer 5 balanced noise."""
    c = rng.integers(20, 40, (RECORDED, LAYERS, EXPERTS))
    c[rng.random((RECORDED, LAYERS, EXPERTS)) < 0.01] = 0      # brief empty rows: short stretches
    c[:, 0, 2] = 400
    c[30:, 1, 7] = 0
    c[100:350, 1, 9] = 500
    return c


def _write(path: Path, counts_by_rank: list[np.ndarray]) -> None:
    recs = [Recorder(path, rank=r, world_size=len(counts_by_rank), name="moe") for r in range(len(counts_by_rank))]
    try:
        for i in range(RECORDED):
            for rec, counts in zip(recs, counts_by_rank):
                c = counts[i]
                rec.submit("expert_load", {
                    "step": i * EVERY, "name": [f"layers.{l}.ffn.router" for l in range(3, 3 + LAYERS)],
                    "layer": np.arange(3, 3 + LAYERS), "counts": c, "imbalance": c.max(1) / c.mean(1),
                    "cv": c.std(1) / c.mean(1), "router_entropy": np.full(LAYERS, 2.0), "dropped": 0,
                    "aux_loss": None, "bias": None}, LAYERS, i * EVERY)
    finally:
        for rec in recs:
            rec.close()


def _expected(total: np.ndarray, upto: int) -> tuple[dict, dict]:
    """Starved and hot experts at recorded row `upto` over every row before it (numpy only)."""
    steps = np.arange(upto + 1) * EVERY
    starved, hot = {}, {}
    for li in range(LAYERS):
        c = total[:upto + 1, li]
        mean = c.astype(float).mean(1, keepdims=True)
        s = S.stretch_at_end(steps, c == 0)
        h = S.stretch_at_end(steps, (c >= S.HOT_FACTOR * mean) & (mean > 0))
        if s:
            starved[3 + li] = s
        if h:
            hot[3 + li] = h
    return starved, hot


@pytest.mark.parametrize("ranks", [1, 2])
def test_starved_and_hot_experts_of_a_run_at_any_step_match_a_whole_pass(tmp_path: Path, ranks: int) -> None:
    rng = np.random.default_rng(ranks)
    per_rank = [_counts(rng) for _ in range(ranks)]
    _write(tmp_path / "run", per_rank)
    total = np.sum(per_rank, axis=0)
    run = LiveRun(tmp_path / "run")
    rows = [399, 200, 120, 360, 40, 10, 399]
    for row in rows:
        starved, hot = _expected(total, row)
        assert S.starved_experts(run, step=row * EVERY + 2, rank=ALL_RANKS) == starved, row
        assert S.hot_experts(run, step=row * EVERY + 2, rank=ALL_RANKS) == hot, row
    starved, hot = _expected(total, RECORDED - 1)
    assert hot[3] == {2: 0}                                # hot since the first step: far past the tail
    assert starved[4][7] == 30 * EVERY and 9 not in hot.get(4, {})
    assert _expected(total, 300)[1][4][9] == 100 * EVERY   # hot from row 100 while it lasted
    run.close()


def test_a_live_runs_flag_changes_grow_with_it_and_stay_right(tmp_path: Path, monkeypatch) -> None:
    """Following a live run: after each poll the verdicts at the newest and at earlier steps equal a
    whole pass over the rows written so far, each poll reads only its new rows, and a step recorded
    again (out of order) starts over, still right."""
    from inspector.views import summary

    rng = np.random.default_rng(7)
    counts = _counts(rng)
    read: list[int] = []
    dense = summary.dense_loads
    monkeypatch.setattr(summary, "dense_loads", lambda table, **kw: read.append(table.num_rows) or dense(table, **kw))
    rec = Recorder(tmp_path / "run", name="moe-live", flush_interval=0.1)
    run = None

    def submit(i: int, step: int) -> None:
        c = counts[i]
        rec.submit("expert_load", {
            "step": step, "name": [f"layers.{l}.ffn.router" for l in range(3, 3 + LAYERS)],
            "layer": np.arange(3, 3 + LAYERS), "counts": c, "imbalance": c.max(1) / c.mean(1),
            "cv": c.std(1) / c.mean(1), "router_entropy": None, "dropped": 0, "aux_loss": None, "bias": None},
            LAYERS, step)

    try:
        for lo, hi in ((0, 90), (90, 91), (91, 250), (250, RECORDED)):
            for i in range(lo, hi):
                submit(i, i * EVERY)
            rec.flush()
            run = run or LiveRun(tmp_path / "run")
            run.poll()
            read.clear()
            for row in (hi - 1, (lo + hi) // 2):
                starved, hot = _expected(counts, row)
                assert S.starved_experts(run, step=row * EVERY) == starved, (lo, hi, row)
                assert S.hot_experts(run, step=row * EVERY) == hot, (lo, hi, row)
            if lo >= 250:        # both rules' changes were built by now (each reads the run once, when first needed)
                assert max(read) <= max(hi - lo, S.TAIL_ROWS) * LAYERS    # new rows and tails, not the whole run
        submit(RECORDED - 1, (RECORDED - 2) * EVERY)                    # a step recorded again: starts over
        rec.flush()
        run.poll()
        read.clear()
        assert 2 in S.hot_experts(run)[3]
        assert (RECORDED + 1) * LAYERS in read
    finally:
        rec.close()
