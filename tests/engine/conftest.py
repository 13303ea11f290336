"""Fixtures for the engine tests (all on the small ``debug`` configs, CPU, fp32)."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    """Seed torch (the one-thread setting comes from tests/conftest.py)."""
    torch.manual_seed(0)
    yield
