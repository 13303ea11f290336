"""Fixtures for the engine tests (all on the small ``debug`` configs, CPU, fp32)."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_single_thread() -> Iterator[None]:
    """Seed torch, and run on one intra-op thread.

    The debug model's ops are tiny: one thread is as fast when the machine is idle and several
    times faster when other processes compete for the 2 cores (OpenMP barrier spinning).
    The previous thread count is restored, so tests elsewhere in the session are unaffected.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
