"""Shared fixtures: the project's Python, a subprocess runner for real multi-process tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
