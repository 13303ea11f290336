"""Fixtures for the views: synthetic runs with known content (numpy only)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.synthetic_run import SyntheticSpec, Written, write_synthetic_run


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Written]:
    """A finished 2-rank synthetic run (rank 1 is three times slower) and what was written."""
    path = tmp_path_factory.mktemp("views") / "run"
    return path, write_synthetic_run(path, SyntheticSpec(steps=60, ranks=2, slow_rank=1))
