"""The own-work and outlier rules of the straggler verdict, on 4-rank runs written through the real
Recorder: a rank slow in its own code between phases (the others wait for it in the tracked
collectives) is flagged with "other" as the cause; a rank whose "other" is as long but whom nobody
waits for, or whose section leads by less than the other ranks differ among themselves, is not."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from inspector.store.recorder import Recorder
from inspector.views import ranks
from inspector.views.live import open_live
from tests.views.timing_rows import flagged, submit_step

STEPS, RANKS, EXTRA_MS = 24, 4, 20.0


def write_run(path: Path, *, culprit: bool, data_ms: tuple[float, ...] = (5.0,) * RANKS,
              jitter_ms: float = 0.0, seed: int = 0) -> Path:
    """Four ranks; rank 0 spends EXTRA_MS in "other" every step. `culprit`: its own work there (the
    others wait that long in DDP's all-reduce), else blocked outside every tracked wait (nobody waits
    for it). `data_ms`: each rank's data section, plus normal noise of `jitter_ms` a step."""
    rng = np.random.default_rng(seed)
    recs = [Recorder(path, rank=r, world_size=RANKS, name="own-work", flush_interval=0.2) for r in range(RANKS)]
    try:
        for s in range(STEPS):
            for r, rec in enumerate(recs):
                fwd, bwd, opt = 20.0 + rng.uniform(0.0, 1.0), 50.0, 5.0
                data = max(data_ms[r] + (rng.normal(0.0, jitter_ms) if jitter_ms else 0.0), 0.5)
                comm = EXTRA_MS if (culprit and r != 0) else 0.0
                other = (EXTRA_MS if r == 0 else 0.0) + comm + 0.5
                submit_step(rec, s, fwd=fwd, bwd=bwd, opt=opt, data=data, other=other, comm=comm)
    finally:
        for rec in recs:
            rec.close()
    return path


def test_a_rank_slow_in_its_own_code_between_phases_is_flagged_with_other_as_cause(tmp_path: Path) -> None:
    why = flagged(write_run(tmp_path / "run", culprit=True))
    assert list(why) == [0] and why[0].startswith("other ") and "own work" in why[0], why


def test_a_rank_blocked_outside_every_tracked_wait_is_not_a_straggler(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", culprit=False)
    assert flagged(run) == {}
    own = ranks.section_ms(open_live(run))["own"].unstack("rank").median()
    assert own[0] > 1.2 * own.drop(0).max()          # own work alone would have flagged it


def test_a_section_lead_within_the_other_ranks_spread_is_noise(tmp_path: Path) -> None:
    # rank 3's data is 2.2x the median and 3 ms above rank 2's, while the other ranks span 25 ms
    # among themselves and it is the slowest on only some of the steps (noise of 6 ms a step)
    # (seed 1: a typical draw, rank 3 the slowest in 12 of the 20 steps; seed 0 happens to give 19)
    noisy = write_run(tmp_path / "noisy", culprit=True, data_ms=(5.0, 15.0, 30.0, 33.0), jitter_ms=6.0, seed=1)
    v = _data_verdict(noisy, 3)
    assert v.ratio >= ranks.STRONG_RATIO and v.lead_ms < v.spread_ms and not v.consistent(), v
    assert 3 not in flagged(noisy)
    slow = write_run(tmp_path / "slow", culprit=True, data_ms=(5.0, 15.0, 30.0, 80.0), jitter_ms=6.0)
    assert flagged(slow)[3].startswith("data "), flagged(slow)


def test_a_rank_slowest_every_step_at_several_times_the_others_is_flagged_despite_one_noisy_other(
        tmp_path: Path) -> None:
    # rank 2's data section is slow too (35 ms): it shortens rank 3's lead (55 - 35 = 20 ms) and widens
    # the others' spread (35 - 5 = 30 ms) by the same amount; rank 3 is 11x the median, slowest every step
    run = write_run(tmp_path / "run", culprit=True, data_ms=(5.0, 5.0, 35.0, 55.0), jitter_ms=1.0)
    v = _data_verdict(run, 3)
    assert v.lead_ms < v.spread_ms and v.consistent(), v
    assert list(flagged(run)) == [3] and flagged(run)[3].startswith("data "), flagged(run)


def _data_verdict(path: Path, rank: int) -> ranks.Verdict:
    """The data section's verdict of `rank` over the last window."""
    verdicts = {label: vs for label, _, vs in ranks.measure_verdicts(open_live(path))}
    return verdicts["data (waits taken out)"][rank]
