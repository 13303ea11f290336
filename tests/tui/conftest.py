"""Fixtures of the terminal UI tests: runs with known content, the anyio backend, a wait helper."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from tests.synthetic_run import SyntheticSpec, Written, write_synthetic_run

FROZEN_NOW = 1_800_000_000.0
"""The header clock of every app in the tests (snapshots stay byte-identical)."""


@pytest.fixture
def anyio_backend() -> str:
    """Textual runs on asyncio only (trio is installed in the venv, but Textual does not support it)."""
    return "asyncio"


@pytest.fixture(scope="session")
def synthetic4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Written]:
    """A finished 4-rank synthetic run, rank 2 three times slower, loss spike at step 40."""
    path = tmp_path_factory.mktemp("tui") / "run4"
    return path, write_synthetic_run(path, SyntheticSpec(steps=60, ranks=4, slow_rank=2))


@pytest.fixture(scope="session")
def bare_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-rank run with neither attention maps nor expert load, and no anomaly."""
    path = tmp_path_factory.mktemp("tui") / "bare"
    write_synthetic_run(path, SyntheticSpec(steps=20, with_attention=False, with_experts=False, spike_step=None))
    return path


@pytest.fixture(scope="session")
def crashed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-rank run that stopped an hour ago without closing."""
    path = tmp_path_factory.mktemp("tui") / "crashed"
    write_synthetic_run(path, SyntheticSpec(steps=20, close=False))
    return path


@pytest.fixture
def corrupt_run(tmp_path: Path) -> Path:
    """A directory whose run.json is truncated."""
    path = tmp_path / "corrupt"
    path.mkdir()
    (path / "run.json").write_text(json.dumps({"name": "x", "format_version": 1})[:12])
    return path


async def wait_until(pilot, predicate: Callable[[], bool], timeout: float = 8.0, step: float = 0.05) -> None:
    """Let the app run until `predicate()` holds (fails the test after `timeout` seconds)."""
    waited = 0.0
    while not predicate():
        assert waited < timeout, "condition not met in time"
        await pilot.pause(step)
        waited += step
