"""Rank table over a window of steps (the replay cursor) and the per-step straggler rule.

Real data: the 4-rank torchrun sample (`sample_runs/straggler-4rank`, rank 2 delayed 50 ms per step);
references are pandas over the RunReader's frames and plain numpy loops, not the views under test.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import inspector
import inspector.views.ranks as ranks
from inspector.views.live import open_live

SAMPLE = Path(__file__).resolve().parents[2] / "sample_runs" / "straggler-4rank"
SLOW = 2
needs_sample = pytest.mark.skipif(not (SAMPLE / "run.json").exists(), reason="straggler-4rank sample not generated")


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per rank/step wide timing, per rank/step wide scalars) of the sample, straight from the reader."""
    reader = inspector.open_run(SAMPLE)
    t = reader.to_pandas("timing")
    t = t[t["name"].isin(["model", "data", "optimizer", "step", "cpu_wait", "collectives"])]
    wide = t.pivot_table(index=["rank", "step"], columns="phase", values="ms", aggfunc="last",
                         observed=True).reset_index()
    wide.columns = [str(c) for c in wide.columns]
    s = reader.to_pandas("scalar", names=["tokens_per_s", "step_time_s", "loss"])
    scal = s.pivot_table(index=["rank", "step"], columns="name", values="value", aggfunc="last").reset_index()
    return wide, scal


def window(wide: pd.DataFrame, at: int, n: int = 20) -> np.ndarray:
    return np.sort(wide.loc[wide["step"] <= at, "step"].unique())[-n:]


@needs_sample
@pytest.mark.parametrize("at", [None, 22])
def test_every_column_comes_from_the_window_ending_at_the_cursor(frames, at) -> None:
    wide, scal = frames
    run = open_live(SAMPLE)
    cursor = {} if at is None else {"at": at}          # following the newest step: the default call
    table = ranks.rank_table(run, **cursor).set_index("rank")
    end = int(wide["step"].max()) if at is None else at
    steps = window(wide, end)
    win = wide[wide["step"].isin(steps)]
    for r in range(4):
        w = win[win["rank"] == r]
        step_ms = float(np.median(w["total"]))
        sc = scal[(scal["rank"] == r) & scal["step"].isin(steps)]
        tokens = float(np.median(sc["tokens_per_s"] * sc["step_time_s"]))
        loss = scal[(scal["rank"] == r) & (scal["step"] <= end)].dropna(subset=["loss"]).sort_values("step")["loss"]
        row = table.loc[r]
        assert row["step"] == w["step"].max()
        assert row["step_ms"] == pytest.approx(step_ms)
        assert row["compute_ms"] == pytest.approx(float(np.median(w[["forward", "data", "optimizer"]].fillna(0).sum(axis=1))))
        assert row["tokens_per_s"] == pytest.approx(tokens * 1000 / step_ms)      # agrees with the step time
        assert row["loss"] == pytest.approx(float(loss.iloc[-1]))
        hist = ranks.step_time_histories(run, last=60, **cursor)[r]
        np.testing.assert_allclose(hist, wide[(wide["rank"] == r) & (wide["step"] <= end)].sort_values("step")["total"].to_numpy()[-60:])
    assert table["straggler"].tolist() == [r == SLOW for r in range(4)]


@needs_sample
def test_straggler_reason_names_the_slow_section_and_its_cost(frames) -> None:
    wide, _ = frames
    run = open_live(SAMPLE)
    reason = ranks.rank_table(run).set_index("rank").loc[SLOW, "straggler_reason"]
    steps = window(wide, int(wide["step"].max()))
    wide = wide.copy()
    # the rank's own data time: the data phase less what it waited there for a collective or a CPU
    waits = sum(wide.get(c, pd.Series(0.0, index=wide.index)).fillna(0.0) for c in ("comm_wait_data", "cpu_wait_data"))
    wide["data"] = wide["data"] - waits.clip(upper=wide["data"])
    win = wide[wide["step"].isin(steps)]
    data_SR = win.pivot(index="step", columns="rank", values="data").to_numpy()
    others_S = np.median(np.delete(data_SR, SLOW, axis=1), axis=1)
    excess = np.median(data_SR[:, SLOW] - others_S)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_S = data_SR[:, SLOW] / others_S
    ratio = np.median(ratio_S[np.isfinite(ratio_S)])        # steps where the others spent time there too
    before = np.sort(wide["step"].unique())[:-20][-20:]            # the 20 steps before the window
    prev_SR = wide[wide["step"].isin(before)].pivot(index="step", columns="rank", values="data").to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # steps where no other rank timed its data
        prev_S = prev_SR[:, SLOW] / np.nanmedian(np.delete(prev_SR, SLOW, axis=1), axis=1)
    history = np.median(prev_S[np.isfinite(prev_S)])
    # the cause first (the section, its ratio to the others, its excess, the rank's own history), then the
    # rule that flagged it: the data section's own time, waits taken out
    assert reason.startswith(f"data {ratio:.2f}× the other ranks, +{excess:.0f} ms "
                             f"(own median of the previous steps {history:.2f}×); data (waits taken out) "), reason
    assert excess > 40          # the demo's 50 ms delay sits before the model's forward: data time


def manual(ms_SR: np.ndarray, step_S: np.ndarray, r: int) -> tuple[float, int, float]:
    """(median ratio to the others' median, steps slowest, median lead share), by plain loops."""
    ratios, slowest, leads = [], 0, []
    for s in range(ms_SR.shape[0]):
        others = [ms_SR[s, q] for q in range(ms_SR.shape[1]) if q != r]
        ratios.append(ms_SR[s, r] / np.median(others))
        slowest += ms_SR[s, r] > max(others)
        leads.append(max(ms_SR[s, r] - max(others), 0) / step_S[s])
    return float(np.median(ratios)), slowest, float(np.median(leads))


def test_rule_holds_when_the_whole_machine_slows_down() -> None:
    rng = np.random.default_rng(0)
    load_S = rng.uniform(1.0, 4.0, 20)[:, None]                # a busy machine slows every rank at once
    ms_SR = 40.0 * load_S * rng.uniform(0.9, 1.1, (20, 4))
    ms_SR[:, 2] += 50.0                                          # the delayed rank
    step_S = ms_SR.max(axis=1) + 30.0
    verdicts = ranks.judge(ms_SR, step_S)
    for r, v in enumerate(verdicts):
        ratio, slowest, lead = manual(ms_SR, step_S, r)
        assert (v.ratio, v.slowest, v.lead) == pytest.approx((ratio, slowest, lead))
    assert [v.flagged(1.25) for v in verdicts] == [False, False, True, False]


def test_a_rank_that_is_often_slow_but_rarely_alone_at_the_top_is_not_flagged() -> None:
    rng = np.random.default_rng(1)
    ms_SR = rng.uniform(30.0, 40.0, (20, 4))
    ms_SR[:, 1] *= 1.5                                            # scheduler-starved ranks, taking turns
    ms_SR[::2, 3] *= 1.6
    step_S = np.full(20, 130.0)
    v = ranks.judge(ms_SR, step_S)[1]
    assert v.ratio >= 1.25 and v.lead < ranks.LEAD_SHARE and not v.flagged(1.25)
    assert ranks.judge(ms_SR[:ranks.MIN_STEPS - 1] * [1, 1, 3, 1], step_S[:7])[2].flagged(1.25) is False  # too few steps


def test_a_section_only_the_slow_rank_spends_time_in_needs_a_smaller_lead() -> None:
    """The others spend no time in the section (a data loader only rank 3 waits on): its ratio is ∞, and a
    lead of 9 % of the step is enough there, while the same lead at 1.3x (scheduler noise) is not."""
    ms_SR = np.zeros((20, 4))
    ms_SR[:, 3] = 36.0
    base_S = np.full(20, 400.0)
    v = ranks.judge(ms_SR, base_S)[3]
    assert v.ratio == np.inf and v.lead == pytest.approx(0.09) and v.slowest == 20
    bar = (ranks.SECTION_FACTOR, ranks.SECTION_SLOWEST, ranks.SECTION_LEAD)
    assert not v.flagged(*bar) and v.flagged(*bar, (ranks.STRONG_RATIO, ranks.STRONG_LEAD))
    noisy_SR = np.full((20, 4), 80.0)
    noisy_SR[:, 3] = 116.0                                        # 1.45x, the same 36 ms lead
    n = ranks.judge(noisy_SR, base_S)[3]
    assert n.ratio == pytest.approx(1.45) and not n.flagged(*bar, (ranks.STRONG_RATIO, ranks.STRONG_LEAD))


def test_gpu_note_names_the_clock_event_that_holds_the_slow_ranks_gpu(tmp_path: Path) -> None:
    """A rank whose GPU NVML reports thermally slowed (hw_thermal) in most samples: the straggler's GPU
    note says so, with how often the other ranks had it; idle and "none" are not reasons."""
    from inspector.store.recorder import Recorder

    for rank in range(3):
        with Recorder(tmp_path / "run", rank=rank, world_size=3) as rec:
            for s in range(10):
                events = "hw_thermal" if rank == 2 and s < 9 else ("gpu_idle" if s == 0 else "none")
                rec.submit("system", {"device": "gpu0", "sm_clock_mhz": 1200.0 if rank == 2 else 1980.0,
                                      "clock_events": events}, 1, step=s)
    run = open_live(tmp_path / "run")
    note = ranks._gpu_note(run, np.arange(10), [0, 1, 2], 2)
    assert note == "GPU 1200 MHz SM clock (others 1980), clocks held by hw_thermal in 90% of samples (other ranks 0%)"
    assert ranks._gpu_note(run, np.arange(10), [0, 1, 2], 0) == "GPU 1980 MHz SM clock (others 1590)"
