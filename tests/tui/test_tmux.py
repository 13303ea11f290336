"""The real `inspector tui` in a tmux pane, on a run another process is still writing."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "tui"

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def _inspector() -> list[str]:
    exe = Path(sys.executable).with_name("inspector")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "inspector.cli"]


class Pane:
    """A detached tmux session on a private socket (no ~/.tmux.conf)."""

    def __init__(self, sock: Path) -> None:
        self.base = ["tmux", "-S", str(sock), "-f", "/dev/null"]

    def tmux(self, *args: str) -> str:
        return subprocess.run(self.base + list(args), check=True, capture_output=True, text=True, timeout=10).stdout

    def capture(self) -> str:
        return self.tmux("capture-pane", "-t", "app", "-p")

    def wait_for(self, *needles: str, timeout: float = 20.0) -> str:
        """The pane once it shows every needle (regular expressions) at the same time."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.capture()
            if all(re.search(n, text) for n in needles):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"pane never showed {needles}:\n{text}")
            time.sleep(0.1)


def test_tui_follows_a_run_being_written(tmp_path: Path) -> None:
    run = tmp_path / "live"
    run.mkdir()
    exit_file = tmp_path / "exit"
    writer = subprocess.Popen([sys.executable, "-m", "tests.synthetic_run", str(run), "--steps", "150",
                               "--sleep", "0.03"], cwd=ROOT)
    pane = Pane(tmp_path / "tmux.sock")
    argv = ["env", "-u", "COLUMNS", "-u", "LINES", *_inspector(), "tui", str(run), "--interval", "0.2"]
    cmd = " ".join(f"'{a}'" for a in argv)       # our own paths only: tmp_path and the venv
    try:
        pane.tmux("new-session", "-d", "-s", "app", "-x", "130", "-y", "36", f"{cmd}; echo $? > '{exit_file}'")
        pane.tmux("set-option", "-t", "app", "remain-on-exit", "on")
        first = pane.wait_for(r"synthetic · live · step \d+", r"1 Ranks", r"Sort column")
        step0 = int(re.search(r"live · step (\d+)", first).group(1))
        later = pane.wait_for(r"synthetic · (live|finished) · step \d+")
        deadline = time.monotonic() + 10
        while int(re.search(r"· step (\d+)", later).group(1)) <= step0 and time.monotonic() < deadline:
            time.sleep(0.2)
            later = pane.capture()
        assert int(re.search(r"· step (\d+)", later).group(1)) > step0, later
        done = pane.wait_for(r"synthetic · finished · step 149", r"\n 0 +\S+ +149 ", timeout=30)
        pane.tmux("send-keys", "-t", "app", "2")
        run_screen = pane.wait_for(r"loss", r"anomalies \(newest first", r"loss_spike")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "tmux_capture_ranks.txt").write_text(done)
        (ARTIFACTS / "tmux_capture_run.txt").write_text(run_screen)
        pane.tmux("send-keys", "-t", "app", "q")
        deadline = time.monotonic() + 10
        while not (exit_file.exists() and exit_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert exit_file.read_text().strip() == "0"
    finally:
        subprocess.run(pane.base + ["kill-server"], capture_output=True)
        writer.kill()
        writer.wait()
