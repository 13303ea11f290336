"""The timing probe's CPU-wait rows against the test's own reading of Linux's schedstat, with a busy
loop pinned to the one core the test runs on (so the training thread really waits for its CPU)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import inspector

STEPS = 8
SCHEDSTAT = Path("/proc/thread-self/schedstat")
pytestmark = pytest.mark.skipif(not SCHEDSTAT.exists(), reason="needs Linux's /proc/thread-self/schedstat")


def waited_s() -> float:
    """Run-queue wait of this thread, read here without the Inspector's reader."""
    return int(SCHEDSTAT.read_text().split()[1]) / 1e9


def _train(run_dir: Path, after_step: list[float]) -> pd.DataFrame:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x_BD = torch.randn(512, 256)
    with inspector.watch(model, run_dir, optimizer=opt, probes=["timing"]) as w:
        for step in range(STEPS):
            model(x_BD).square().mean().backward()
            opt.step()
            opt.zero_grad()
            w.step()
            after_step.append(waited_s())
    t = inspector.open_run(run_dir).to_pandas("timing")
    return t.pivot_table(index="step", columns=["name", "phase"], values="ms", aggfunc="last")


@pytest.fixture
def one_busy_core():
    """This process and a busy loop pinned to the same core; the affinity is restored after."""
    before = os.sched_getaffinity(0)
    core = min(before)
    os.sched_setaffinity(0, {core})
    loop = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
    try:
        yield
    finally:
        loop.kill()
        loop.wait()
        os.sched_setaffinity(0, before)


def test_cpu_wait_rows_equal_the_threads_run_queue_wait(tmp_path: Path, one_busy_core: None) -> None:
    after_step: list[float] = []
    t = _train(tmp_path / "run", after_step)
    total_ms = t[("cpu_wait", "cpu_wait")]
    assert list(total_ms.index) == list(range(STEPS))
    # Each step's wait runs from the previous step's end to this one's: the test's readings just after
    # each `w.step()` bound the same spans (up to the time between the probe's mark and the reading).
    own_ms = pd.Series([(b - a) * 1e3 for a, b in zip(after_step, after_step[1:])], index=range(1, STEPS))
    assert own_ms.sum() > 50.0, "the busy loop took no CPU from this thread: nothing to compare"
    diff = (total_ms.loc[1:] - own_ms).abs()
    assert (diff <= 8.0 + 0.1 * own_ms).all(), pd.DataFrame({"probe": total_ms, "test": own_ms})
    for phase, owner in (("forward", ("model", "forward")), ("backward", ("model", "backward")),
                         ("optimizer", ("optimizer", "optimizer")), ("data", ("data", "data"))):
        part = t[("cpu_wait", f"cpu_wait_{phase}")].dropna()
        assert (part <= t[owner].loc[part.index] + 1e-6).all(), phase           # a part of that section
    parts = t.loc[1:, [c for c in t.columns if c[0] == "cpu_wait" and c[1] != "cpu_wait"]].sum(axis=1)
    assert (parts <= total_ms.loc[1:] + 1e-6).all()
    assert t[("cpu_wait", "cpu_wait_backward")].sum() > 0


def test_no_cpu_wait_rows_where_the_wait_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import inspector.probes.timing as timing

    monkeypatch.setattr(timing, "run_queue_wait_s", lambda: math.nan)
    t = _train(tmp_path / "run", [])
    assert "cpu_wait" not in set(t.columns.get_level_values(0))
    assert t[("step", "total")].notna().all()
