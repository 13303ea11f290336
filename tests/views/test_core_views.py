"""The shared views against what the synthetic run wrote (numpy oracles), and live tailing."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from inspector.views import LiveRun, RunNotReady, downsample_xy, open_live
from inspector.views.anomalies import anomaly_list
from inspector.views.attention import (attention_grid, attention_layers, attention_matrix, attention_steps,
                                       collapsed_heads, pool_map, entropy_matrix, head_stats)
from inspector.views.experts import expert_bias, expert_counts, expert_steps, imbalance_series
from inspector.views.ranks import rank_summary, rank_table, step_time_histories, straggler_flags
from inspector.views.series import scalar_series
from inspector.views.steps import nearest_at_or_before
from inspector.views.timing import phase_shares, step_breakdown
from tests.synthetic_run import SyntheticSpec, write_synthetic_run


def test_views_never_import_torch() -> None:
    code = ("import sys, inspector.views, inspector.views.attention, inspector.views.ranks, "
            "inspector.views.experts, inspector.views.timing, inspector.views.anomalies, inspector.views.series; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scalar_series_matches_written_loss(synthetic) -> None:
    path, written = synthetic
    run = open_live(path)
    df = scalar_series(run, "loss", rank=1)
    np.testing.assert_allclose(df["value"].to_numpy(), written.loss[1])
    assert df["step"].tolist() == list(range(60))
    mean = scalar_series(run, "loss", rank=None)
    np.testing.assert_allclose(mean["value"].to_numpy(), (written.loss[0] + written.loss[1]) / 2)


def test_downsample_keeps_spike_and_bounds_points() -> None:
    x = np.arange(100_000)
    y = np.sin(x / 500.0)
    y[73_123] = 50.0
    y[10] = np.nan
    xs, ys = downsample_xy(x, y, 2000)
    assert len(xs) <= 2000
    assert 73_123 in xs and np.nanmax(ys) == 50.0
    assert np.all(np.diff(xs) > 0)
    short_x, short_y = downsample_xy(x[:50], y[:50], 2000)
    assert len(short_x) == 50


def test_nearest_at_or_before() -> None:
    assert nearest_at_or_before([0, 10, 20], 15) == 10
    assert nearest_at_or_before([0, 10, 20], 20) == 20
    assert nearest_at_or_before([5, 10], 2) == 5
    assert nearest_at_or_before([], 3) is None


def test_step_breakdown_and_shares(synthetic) -> None:
    path, written = synthetic
    run = open_live(path)
    df = step_breakdown(run, rank=1)
    np.testing.assert_allclose(df["total"].to_numpy(), written.step_ms[1])
    parts = df[["forward", "backward", "optimizer", "data", "other"]].sum(axis=1).to_numpy()
    np.testing.assert_allclose(parts, written.step_ms[1])
    shares = phase_shares(run, rank=0)
    assert pytest.approx(sum(shares.values())) == 1.0
    assert shares["backward"] > shares["forward"] > shares["optimizer"]


def test_rank_table_flags_slow_rank(synthetic) -> None:
    path, written = synthetic
    run = open_live(path)
    table = rank_table(run)
    assert table["rank"].tolist() == [0, 1]
    assert table["straggler"].tolist() == [False, True]
    np.testing.assert_allclose(table["step_ms"], [np.median(written.step_ms[r][-20:]) for r in (0, 1)])
    np.testing.assert_allclose(table["loss"], [written.loss[r][-1] for r in (0, 1)])
    assert table["status"].tolist() == ["finished", "finished"]
    summary = rank_summary(table)
    assert summary.loc["max", "step_ms"] == table["step_ms"].max()
    np.testing.assert_allclose(step_time_histories(run, last=5)[1], written.step_ms[1][-5:])
    assert straggler_flags({0: 10.0}) == {0: False}


def test_attention_views_equal_written_maps(synthetic) -> None:
    path, written = synthetic
    run = open_live(path)
    assert attention_steps(run) == sorted(written.attention)
    assert attention_layers(run, step=33) == [0, 1]
    m = attention_matrix(run, step=33, layer=1, head=2)
    assert m.step == 30 and m.tokens == [f"t{i}" for i in range(16)]
    np.testing.assert_array_equal(m.probs, written.attention[30][1, 2].astype(np.float32))
    grid = attention_grid(run, step=30, size=8)
    assert len(grid) == 8
    expect = written.attention[30][0, 3].astype(np.float32).reshape(8, 2, 8, 2).sum(axis=3).mean(axis=1)  # keys summed
    np.testing.assert_allclose(grid[(0, 3)], expect, rtol=1e-6)
    assert attention_matrix(run, step=30, layer=7, head=0) is None
    stats = head_stats(run, step=59)
    assert len(stats) == 8 and stats["collapsed"].sum() == 1
    p = written.attention[50].astype(np.float64)
    ent = -(p * np.log(np.where(p > 0, p, 1))).sum(-1).mean(-1)
    np.testing.assert_allclose(stats["entropy"], ent.reshape(-1))
    labels, steps, mat = entropy_matrix(run)
    assert labels[0] == "L0·H0" and steps == sorted(written.attention) and mat.shape == (8, 6)
    assert collapsed_heads(run) == [(1, 0, 30)]


def test_pool_map_uneven_keeps_rows_stochastic() -> None:
    mat = np.arange(35, dtype=np.float64).reshape(5, 7)
    small = pool_map(mat, 3)
    assert small.shape == (3, 3)
    assert small[0, 0] == pytest.approx(mat[:1, :2].sum(1).mean())
    assert small[1, 2] == pytest.approx(mat[1:3, 4:].sum(1).mean())
    probs = np.random.default_rng(0).dirichlet(np.ones(50), size=40)
    np.testing.assert_allclose(pool_map(probs, 8).sum(1), 1.0)


def test_expert_views_equal_written_counts(synthetic) -> None:
    path, written = synthetic
    run = open_live(path)
    assert expert_steps(run) == sorted(written.expert_counts)
    layers, counts = expert_counts(run, step=12)
    assert layers == [0, 1]
    np.testing.assert_array_equal(counts, written.expert_counts[10])
    imb = imbalance_series(run)
    c = written.expert_counts[10]
    got = imb[(imb["step"] == 10)].sort_values("layer")["imbalance"].to_numpy()
    np.testing.assert_allclose(got, c.max(1) / c.mean(1))
    _, bias = expert_bias(run, step=12)
    assert bias.shape == (2, 8) and bias[0, 3] == pytest.approx(0.03)


def test_anomaly_list_newest_first(synthetic) -> None:
    path, _ = synthetic
    df = anomaly_list(open_live(path))
    assert df["step"].tolist() == [40, 40] and df["rank"].tolist() == [0, 1]
    assert df["kind"].iloc[0] == "loss_spike"


def test_run_without_attention_or_experts(tmp_path) -> None:
    write_synthetic_run(tmp_path / "r", SyntheticSpec(steps=12, with_attention=False, with_experts=False))
    run = open_live(tmp_path / "r")
    assert attention_steps(run) == [] and attention_matrix(run, step=0, layer=0, head=0) is None
    assert attention_grid(run, step=0) == {} and head_stats(run, step=0).empty
    assert entropy_matrix(run)[0] == []
    assert expert_counts(run, step=5)[1].size == 0 and imbalance_series(run).empty
    assert expert_bias(run, step=3) == ([], None)


def test_open_live_on_missing_dir(tmp_path) -> None:
    with pytest.raises(RunNotReady, match="no run here yet"):
        open_live(tmp_path / "nothing")


def test_live_run_tails_only_new_records(tmp_path) -> None:
    path = tmp_path / "live"
    proc = subprocess.Popen([sys.executable, "-m", "tests.synthetic_run", str(path), "--steps", "40",
                             "--sleep", "0.05"])
    try:
        deadline = time.time() + 30
        while not (path / "run.json").exists() or not list(path.glob("rank-*/seg-*")):
            assert time.time() < deadline, "writer never started"
            time.sleep(0.05)
        run = LiveRun(path)
        assert run.version("scalar") == 0             # opening reads no kind: each is tailed once asked for
        seen_lengths = [len(scalar_series(run, "loss"))]
        while proc.poll() is None and time.time() < deadline:
            changed = run.poll()
            if "scalar" in changed:
                seen_lengths.append(len(scalar_series(run, "loss")))
            time.sleep(0.1)
        run.poll()
        final = scalar_series(run, "loss")
        assert final["step"].tolist() == list(range(40)), "every step exactly once"
        assert len(seen_lengths) >= 2 and seen_lengths == sorted(seen_lengths)
        assert run.status() == "finished"
    finally:
        proc.kill()
        proc.wait()


def test_rank_table_lists_ranks_that_never_wrote_and_the_header_counts_problems(tmp_path) -> None:
    import warnings

    from inspector.views.overview import run_header
    from tests.store.damaged_runs import record_run

    record_run(tmp_path / "run", steps=3, world_size=3, maps=False)     # ranks 1 and 2 never start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = LiveRun(tmp_path / "run")
        table = rank_table(run)
        header = run_header(run)
    assert table["rank"].tolist() == [0, 1, 2]
    assert table["status"].tolist() == ["finished", "missing", "missing"]
    assert header.status == "damaged" and header.problems == 1 and "⚠ 1 problem" in header.line()
    summary = rank_summary(table)
    assert summary.loc["min", "step"] == 2                  # missing ranks do not drag the step range
