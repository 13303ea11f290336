"""The CPU-wait view: the ms each rank's training thread was runnable while another process held its
CPU (the timing probe's whole-step "cpu_wait" rows). Real data: the 4-rank torchrun sample (4 ranks on
2 cores, so every rank waits); the oracle is the raw timing frame read with pandas. Above 32 ranks
the chart is the min / median / max over ranks (a run written through the real Recorder)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspector.store.recorder import Recorder
from inspector.views.live import LiveRun
from inspector.views.ranks import rank_summary, rank_table, window_steps
from inspector.views.system import MAX_SERIES, cpu_wait_series

SAMPLE = Path(__file__).resolve().parents[2] / "sample_runs" / "straggler-4rank"


def _raw(run: LiveRun):
    t = run.frame("timing")
    return t[(t["name"] == "cpu_wait") & (t["phase"] == "cpu_wait")]


@pytest.mark.skipif(not (SAMPLE / "run.json").exists(), reason="straggler-4rank sample not generated")
def test_cpu_wait_per_rank_and_step_equals_the_recorded_rows() -> None:
    run = LiveRun(SAMPLE)
    raw = _raw(run)
    assert len(raw) and (raw["ms"] > 0).any()                      # 4 ranks on 2 cores do wait
    series = cpu_wait_series(run)
    assert sorted(series) == [f"r{r}" for r in range(4)]
    for r in range(4):
        mine = raw[raw["rank"] == r].sort_values("step")
        np.testing.assert_array_equal(series[f"r{r}"]["step"].to_numpy(), mine["step"].to_numpy())
        np.testing.assert_allclose(series[f"r{r}"]["value"].to_numpy(), mine["ms"].to_numpy())
    table = rank_table(run).set_index("rank")
    steps = window_steps(run)
    for r in range(4):
        mine = raw[(raw["rank"] == r) & raw["step"].isin(steps)]
        assert table.loc[r, "cpu_wait_ms"] == pytest.approx(float(np.median(mine["ms"])))
    per_rank = [float(np.median(raw[(raw["rank"] == r) & raw["step"].isin(steps)]["ms"])) for r in range(4)]
    spread = rank_summary(table.reset_index())["cpu_wait_ms"]     # the TUI's min / median / max row
    assert list(spread) == pytest.approx([min(per_rank), float(np.median(per_rank)), max(per_rank)])


def test_above_32_ranks_the_chart_is_the_spread(tmp_path: Path) -> None:
    ranks = MAX_SERIES + 1
    for r in range(ranks):
        with Recorder(tmp_path / "run", rank=r, world_size=ranks, name="wide", heartbeat_s=0) as rec:
            for step in range(3):
                rec.submit("timing", {"name": ["cpu_wait"], "phase": ["cpu_wait"], "ms": [float(r + step)]}, 1, step)
    series = cpu_wait_series(LiveRun(tmp_path / "run"))
    assert list(series) == [f"max of {ranks}", f"median of {ranks}", f"min of {ranks}"]
    np.testing.assert_allclose(series[f"max of {ranks}"]["value"], [32, 33, 34])
    np.testing.assert_allclose(series[f"median of {ranks}"]["value"], [16, 17, 18])
    np.testing.assert_allclose(series[f"min of {ranks}"]["value"], [0, 1, 2])


def test_a_run_without_cpu_waits_has_none(tmp_path: Path) -> None:
    with Recorder(tmp_path / "run", name="gpu-like", heartbeat_s=0) as rec:
        rec.submit("timing", {"name": ["step"], "phase": ["total"], "ms": [10.0]}, 1, 0)
    run = LiveRun(tmp_path / "run")
    assert cpu_wait_series(run) == {} and np.isnan(rank_table(run)["cpu_wait_ms"].iloc[0])


@pytest.mark.skipif(not (SAMPLE / "run.json").exists(), reason="straggler-4rank sample not generated")
def test_inspector_summary_says_how_long_the_ranks_waited_for_a_cpu() -> None:
    from tests.conftest import inspector_cli

    table = rank_table(LiveRun(SAMPLE))
    median, step = float(table["cpu_wait_ms"].median()), float(table["step_ms"].median())
    worst = table.loc[table["cpu_wait_ms"].idxmax()]
    out = inspector_cli("summary", str(SAMPLE), "--width", "240")
    assert out.returncode == 0, out.stderr
    assert (f"CPU contention: the training threads waited for a CPU another process held {median:.1f} ms a step "
            f"(median over 4 ranks; {median / step:.0%} of a step); most: rank {int(worst['rank'])}, "
            f"{worst['cpu_wait_ms']:.1f} ms") in out.stdout
