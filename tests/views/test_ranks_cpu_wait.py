"""CPU waits in the straggler rule, on runs written through the real Recorder: a rank whose backward is
longer only by the time it waited for a CPU is not a straggler; the same wall times without the
CPU-wait rows, or a backward longer by its own work, are."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspector.store.recorder import Recorder
from inspector.views import ranks
from inspector.views.live import open_live
from tests.views.timing_rows import flagged, submit_step

STEPS, EXTRA_MS = 24, 20.0


def write_run(path: Path, *, slow_by: str | None, cpu_wait_rows: bool = True) -> Path:
    """Two ranks, 100 ms steps. Rank 1's backward is EXTRA_MS longer (unless `slow_by` is None): its own
    work ("work") or a wait for a CPU ("cpu_wait"); rank 0 waits that long in DDP's final all-reduce."""
    rng = np.random.default_rng(0)
    recs = [Recorder(path, rank=r, world_size=2, name="cpu-wait", flush_interval=0.2) for r in range(2)]
    try:
        for s in range(STEPS):
            for r, rec in enumerate(recs):
                extra = EXTRA_MS if (r == 1 and slow_by) else 0.0
                jitter = rng.uniform(0.0, 1.0)
                fwd, bwd, opt, data = 20.0 + jitter, 50.0 + extra, 5.0, 5.0
                comm = EXTRA_MS - extra if slow_by else 0.0
                waited = extra if slow_by == "cpu_wait" else 0.0
                waits = ({"forward": 0.0, "backward": waited, "optimizer": 0.0, "data": 0.0, "": waited}
                         if cpu_wait_rows else None)
                submit_step(rec, s, fwd=fwd, bwd=bwd, opt=opt, data=data, other=comm + 0.5, comm=comm,
                            cpu_waits=waits)
    finally:
        for rec in recs:
            rec.close()
    return path


def test_a_backward_longer_by_its_own_work_is_flagged(tmp_path: Path) -> None:
    why = flagged(write_run(tmp_path / "run", slow_by="work"))
    assert list(why) == [1] and why[1].startswith("backward "), why


def test_a_backward_longer_only_by_its_wait_for_a_cpu_is_not(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", slow_by="cpu_wait")
    assert flagged(run) == {}
    sections = ranks.section_ms(open_live(run)).xs(1, level="rank")
    assert sections["backward"].to_numpy() == pytest.approx(np.full(STEPS, 50.0))     # 70 wall − 20 waited
    assert sections["cpu_wait"].to_numpy() == pytest.approx(np.full(STEPS, EXTRA_MS))


def test_without_cpu_wait_rows_the_wall_clock_decides(tmp_path: Path) -> None:
    why = flagged(write_run(tmp_path / "run", slow_by="cpu_wait", cpu_wait_rows=False))
    assert list(why) == [1] and why[1].startswith("backward "), why


def test_a_healthy_pair_flags_nothing(tmp_path: Path) -> None:
    assert flagged(write_run(tmp_path / "run", slow_by=None)) == {}
