"""Fixtures for the engine tests (all on the small ``debug`` configs, CPU, fp32)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
