"""The real `inspector demo` as a script sees it: start-up stages before the first progress bar, the
dashboard stopped with a word when not at a terminal, no deprecation noise from the multi-rank run."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("loading torch and the engine", "building the model (debug)", "attaching the probes",
          "training 2 steps")
STAGE_LINE = re.compile(r"^inspector demo: +(\d+\.\d) s  (.*)$")


def _demo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The venv's `inspector demo`, stdout a pipe (not a terminal), stderr merged in order, no stdin."""
    exe = Path(sys.executable).with_name("inspector")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "inspector.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*cmd, "demo", "--config", "debug", "--steps", "2", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def _stages(out: str) -> list[tuple[float, str]]:
    return [(float(m[1]), m[2]) for line in out.splitlines() if (m := STAGE_LINE.match(line))]


def test_startup_stages_come_before_the_first_bar_and_the_dashboard_stop_is_announced(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    res = _demo("--no-browser", "--port", "0", "--out", str(run_dir))
    out = res.stdout
    assert res.returncode == 0, out[-3000:]
    stages = _stages(out)
    said = [what for _, what in stages]
    assert said[0] == "starting the dashboard"
    for stage in STAGES:                                    # each once, in order
        assert sum(what.startswith(stage) for what in said) == 1, (stage, said)
    order = [next(i for i, what in enumerate(said) if what.startswith(s)) for s in STAGES]
    assert order == sorted(order)
    times = [t for t, _ in stages]
    assert times == sorted(times) and times[0] >= 0
    assert out.index(STAGES[-1]) < out.index("train:")      # all said before the first progress bar
    # the dashboard served while training, then stopped with a word and the command to reopen it
    assert re.search(r"dashboard at http://127\.0\.0\.1:\d+/ \(live while training; it stops when training "
                     r"ends, as this is not a terminal\)", out)
    last = out.strip().splitlines()[-1]
    assert "dashboard stopped" in last and last.endswith(f"dash {run_dir}"), last
    assert (run_dir / "run.json").exists()


@pytest.mark.multiproc
@pytest.mark.slow
def test_two_rank_demo_says_its_stages_once_and_warns_nothing(tmp_path: Path) -> None:
    res = _demo("--ranks", "2", "--no-dash", "--no-progress", "--out", str(tmp_path / "run"))
    out = res.stdout
    assert res.returncode == 0, out[-3000:]
    said = [what for _, what in _stages(out)]
    assert said[0] == "starting 2 training processes under torchrun"
    for stage in STAGES:                                    # rank 0 speaks, rank 1 does not
        assert sum(what.startswith(stage) for what in said) == 1, (stage, said)
    assert "Warning" not in out and "broadcast_buffers" not in out, out[-3000:]
    assert "2 rank(s)" in out
