"""Widgets against numpy oracles, the import rule, and the `inspector tui` command's errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from inspector.tui.target import resolve_target
from inspector.tui.widgets.format import gib
from inspector.tui.widgets.heatmap import fit_matrix, half_block_strips
from inspector.tui.widgets.rank_table import WIDTHS
from inspector.tui.widgets.ramp import hex_colour, ramp_rgb, text_sparkline
from tests.conftest import inspector_cli
from tests.synthetic_run import SyntheticSpec, write_synthetic_run


def test_half_blocks_put_two_matrix_rows_in_one_line() -> None:
    m = np.array([[0.0, 1.0], [0.25, 0.5], [1.0, 0.0]])
    strips = half_block_strips(m, gamma=1.0)
    assert len(strips) == 2                               # 3 rows -> 2 lines, the last half empty
    segs = [list(s) for s in strips]
    assert all(seg.text == "▀" for line in segs for seg in line)
    assert segs[0][1].style.color.name == hex_colour(ramp_rgb(1.0))
    assert segs[0][0].style.bgcolor.name == hex_colour(ramp_rgb(0.25))
    assert segs[1][0].style.color.name == hex_colour(ramp_rgb(1.0)) and segs[1][0].style.bgcolor is None


def test_fit_matrix_block_averages_down_and_repeats_up() -> None:
    m = np.arange(16, dtype=float).reshape(4, 4)
    np.testing.assert_array_equal(fit_matrix(m, 2, 2), m.reshape(2, 2, 2, 2).mean(axis=(1, 3)))
    np.testing.assert_array_equal(fit_matrix(m, 8, 12), np.kron(m, np.ones((2, 2))))


def test_gpu_memory_of_large_cards_fits_the_rank_column() -> None:
    """An H100's 65.2 of 79.6 GiB and an H200's full 141 GiB fit the column whole (they were cut)."""
    G = 2**30
    assert gib(65.2 * G, 79.6 * G) == "65/80G"
    assert gib(140.6 * G, 140.6 * G) == "141/141G"
    assert gib(4.0 * G, 8.0 * G) == "4.0/8.0G" and gib(None, 8 * G) == "N/A"
    for used, total in ((65.2, 79.6), (140.6, 140.6), (9.99, 79.6), (0.5, 24.0)):
        assert len(gib(used * G, total * G)) <= WIDTHS["gpu_mem_used"]


def test_sparkline_scales_to_a_shared_range() -> None:
    assert text_sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert text_sparkline([10, 10], 8, 0, 20) == "▅▅"
    assert text_sparkline([1, 2, 3], 2) == "▁█"


def test_tui_never_imports_torch_or_the_writer(tmp_path) -> None:
    run = tmp_path / "run"
    write_synthetic_run(run, SyntheticSpec(steps=5))
    code = f"""
import asyncio, sys
from inspector.tui.app import InspectorApp
async def main():
    app = InspectorApp({str(run)!r})
    async with app.run_test(size=(100, 30)) as pilot:
        for key in "1234":
            await pilot.press(key)
            while not app.settled:
                await pilot.pause(0.05)
asyncio.run(main())
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "inspector_engine")
             or m.startswith(("inspector.probes", "inspector.sysmon", "inspector.store.writer",
                              "inspector.store.recorder")))
assert not bad, bad
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_directory_is_one_line_and_status_2(tmp_path) -> None:
    result = inspector_cli("tui", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"inspector: error: {tmp_path / 'nope'}: no such directory"


def test_a_root_of_runs_opens_the_newest(tmp_path) -> None:
    import os
    import time

    for i, name in enumerate(["b", "a"]):
        write_synthetic_run(tmp_path / "runs" / name, SyntheticSpec(steps=2, with_attention=False))
        stamp = time.time() - 100 + i * 50
        os.utime(tmp_path / "runs" / name / "run.json", (stamp, stamp))
    assert resolve_target(tmp_path / "runs") == tmp_path / "runs" / "a"
    assert resolve_target(tmp_path / "runs" / "b") == tmp_path / "runs" / "b"
    assert resolve_target(tmp_path) == tmp_path / "runs" / "a"
