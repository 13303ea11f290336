"""Expert load across ranks is the exact job total: a real 3-rank torchrun (gloo, CPU) where every rank
routes its own tokens; the views' all-rank counts, imbalance and share equal the sum of what the
routers chose, counted by the workers' own hooks (tests/ep_worker.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inspector.views.experts import ALL_RANKS, expert_counts, expert_share_over_time, expert_steps, imbalance_series
from inspector.views.live import LiveRun
from tests.conftest import ROOT

WORLD = 3


@pytest.fixture(scope="module")
def ep_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict[str, np.ndarray]]]:
    out = tmp_path_factory.mktemp("ep")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           str(ROOT / "tests" / "ep_worker.py"), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    totals: dict[int, dict[str, np.ndarray]] = {}
    for r in range(WORLD):
        for step, per in json.loads((out / f"routed-rank{r}.json").read_text()).items():
            for name, counts in per.items():
                slot = totals.setdefault(int(step), {})
                slot[name] = slot.get(name, 0) + np.asarray(counts)
    return out / "run", totals


@pytest.mark.multiproc
def test_all_rank_counts_are_the_sum_of_what_every_router_chose(ep_run) -> None:
    run_dir, totals = ep_run
    run = LiveRun(run_dir)
    assert run.ranks() == list(range(WORLD))
    per_rank = [expert_counts(run, step=0, rank=r)[1] for r in range(WORLD)]
    assert len({int(c.sum()) for c in per_rank}) == WORLD                 # the ranks really routed different tokens
    names = sorted(next(iter(totals.values())))
    assert expert_steps(run, ALL_RANKS) == sorted(totals)
    for step, per in totals.items():
        layers, counts = expert_counts(run, step=step, rank=ALL_RANKS)
        expected = np.stack([per[n] for n in names])
        np.testing.assert_array_equal(counts, expected)
    imb = imbalance_series(run, rank=ALL_RANKS)
    last = max(totals)
    for i, name in enumerate(names):
        c = totals[last][name].astype(float)
        got = imb[(imb["step"] == last) & (imb["layer"] == layers[i])]["imbalance"].item()
        assert got == pytest.approx(c.max() / c.mean())
    steps, share = expert_share_over_time(run, layer=layers[0], rank=ALL_RANKS)
    c = np.stack([totals[s][names[0]] for s in sorted(totals)]).T.astype(float)
    np.testing.assert_allclose(share, c / c.sum(0), rtol=1e-12)
