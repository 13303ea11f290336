"""A seeded sample of the run-store fuzz harness (`benchmarks/fuzz_store.py` runs 10,000 cases).

Every case is a damaged copy of a recorded run, read through every public reader API and the CLI
in a worker subprocess; no case may raise anything but a RunError, crash or hang a worker, return
rows the run never held, or lose rows without reporting it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.store import fuzz_lib
from tests.store.fuzz_mutations import FAMILIES

CASES = 300     # ~15 per family: under 90 s on 2 cores


@pytest.mark.slow
@pytest.mark.multiproc
def test_damaged_runs_read_safely(tmp_path: Path) -> None:
    specs = fuzz_lib.make_specs(CASES, seed=0)
    results = fuzz_lib.run_cases(specs, fuzz_lib.prepare(tmp_path), workers=min(2, os.cpu_count() or 1),
                                 timeout=60.0)   # generous: CI may share its 2 cores; a real hang never ends
    table = fuzz_lib.tabulate(results)
    assert set(table) == {*FAMILIES, "total"}, "every family ran"
    assert table["total"]["tried"] >= CASES * 0.98, fuzz_lib.format_report(results)
    assert fuzz_lib.failures(table) == 0, "\n" + fuzz_lib.format_report(results)
