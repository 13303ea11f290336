"""Shared fixtures: the project's Python, a subprocess runner for real multi-process tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread in every test, restoring the previous count afterwards.

    Test models are tiny: one thread is as fast on an idle machine, and many times faster when
    other processes compete for CI's 2 cores (OpenMP threads spin against each other).
    """
    torch = sys.modules.get("torch")
    if torch is None:  # tests that never import torch (the UIs) leave it alone
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def python() -> str:
    """The interpreter running the tests (the project's venv)."""
    return sys.executable


def inspector_cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real `inspector` console script (no shell) and capture its output."""
    exe = Path(sys.executable).with_name("inspector")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "inspector.cli"]
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
