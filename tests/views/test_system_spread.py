"""System charts above `MAX_SERIES` (rank, device) series: min / median / max over the ranks per step,
checked against numpy over the values the test wrote (40 ranks through the real Recorder)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from inspector.store.recorder import Recorder
from inspector.views.live import open_live
from inspector.views.system import MAX_SERIES, system_series

RANKS, STEPS = MAX_SERIES + 8, 6


def test_many_ranks_give_three_lines_over_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    power = rng.uniform(200.0, 700.0, size=(STEPS, RANKS))
    for r in range(RANKS):
        with Recorder(tmp_path / "run", rank=r, world_size=RANKS, name="spread") as rec:
            for s in range(STEPS):
                rec.submit("system", {"device": "cuda:0", "gpu_util": 90.0, "mem_used": 1e9, "mem_total": 8e10,
                                      "power_w": power[s, r], "temp_c": 60.0, "sm_clock_mhz": 1800.0}, 1, step=s)
    series = system_series(open_live(tmp_path / "run"), "power_w")
    assert list(series) == [f"max of {RANKS}", f"median of {RANKS}", f"min of {RANKS}"]
    for label, fn in (("max", np.max), ("median", np.median), ("min", np.min)):
        got = series[f"{label} of {RANKS}"]
        assert got["step"].tolist() == list(range(STEPS))
        np.testing.assert_allclose(got["value"], fn(power, axis=1))
