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
from tests.views.timing_rows import submit_step

STEPS, RANKS, EXTRA_MS = 24, 4, 20.0


def write_run(path: Path, *, culprit: bool, data_ms: tuple[float, ...] = (5.0,) * RANKS) -> Path:
    """Four ranks; rank 0 spends EXTRA_MS in "other" every step. `culprit`: its own work there (the
    others wait that long in DDP's all-reduce), else blocked outside every tracked wait (nobody waits
    for it). `data_ms`: each rank's data section."""
    rng = np.random.default_rng(0)
    recs = [Recorder(path, rank=r, world_size=RANKS, name="own-work", flush_interval=0.2) for r in range(RANKS)]
    try:
        for s in range(STEPS):
            for r, rec in enumerate(recs):
                fwd, bwd, opt, data = 20.0 + rng.uniform(0.0, 1.0), 50.0, 5.0, data_ms[r]
                comm = EXTRA_MS if (culprit and r != 0) else 0.0
                other = (EXTRA_MS if r == 0 else 0.0) + comm + 0.5
                submit_step(rec, s, fwd=fwd, bwd=bwd, opt=opt, data=data, other=other, comm=comm)
    finally:
        for rec in recs:
            rec.close()
    return path


def flagged(path: Path) -> dict[int, str]:
    return {r: why for r, why in ranks.straggler_reasons(open_live(path)).items() if why}


def test_a_rank_slow_in_its_own_code_between_phases_is_flagged_with_other_as_cause(tmp_path: Path) -> None:
    why = flagged(write_run(tmp_path / "run", culprit=True))
    assert list(why) == [0] and why[0].startswith("other ") and "own work" in why[0], why


def test_a_rank_blocked_outside_every_tracked_wait_is_not_a_straggler(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", culprit=False)
    assert flagged(run) == {}
    own = ranks.section_ms(open_live(run))["own"].unstack("rank").median()
    assert own[0] > 1.2 * own.drop(0).max()          # own work alone would have flagged it


def test_a_section_lead_within_the_other_ranks_spread_is_noise(tmp_path: Path) -> None:
    # rank 3's data leads rank 2's by 12 ms (11 % of the step's own work) at 2.8x the median, while the
    # other ranks span 25 ms among themselves
    noisy = write_run(tmp_path / "noisy", culprit=True, data_ms=(5.0, 15.0, 30.0, 42.0))
    assert 3 not in flagged(noisy)
    slow = write_run(tmp_path / "slow", culprit=True, data_ms=(5.0, 15.0, 30.0, 80.0))
    assert flagged(slow)[3].startswith("data "), flagged(slow)
