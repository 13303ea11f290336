"""The terminal UI's colours are anchored to meaning (issue 13 item 5): a nearly uniform entropy grid
(a random-init demo run) is drawn as one colour near the top of 0 … ln(keys), not stretched over the
whole ramp; attention maps sit on 0 … 1; expert bars are coloured by load relative to balanced.
Oracles: the key count the run was trained with, hand-interpolated ramp colours, numpy."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from rich.text import Text
from textual.widgets import Static

from inspector.tui.app import InspectorApp
from inspector.tui.widgets.heatmap import HeatMap, half_block_strips
from tests.tui.conftest import FROZEN_NOW, wait_until
from tests.watched_training import record_short_demo

pytestmark = pytest.mark.anyio
SEQ = 24
SIZE = (150, 40)
ROOT = Path(__file__).resolve().parents[2]
ALARM_LOW = np.array([(128, 0, 38), (189, 0, 38), (227, 26, 28), (252, 78, 42), (253, 141, 60), (254, 178, 76),
                      (254, 217, 118), (255, 237, 160), (255, 255, 204)], float)   # YlOrRd, reversed


def by_hand(stops: np.ndarray, p: float) -> np.ndarray:
    """Linear interpolation along `stops` at position p in [0, 1], written out for the test."""
    x = p * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    return np.round(stops[i] + (x - i) * (stops[i + 1] - stops[i]))


def rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], float)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's recording path on the engine's debug config: 2 steps of 24 tokens (maps at step 0)."""
    return record_short_demo(tmp_path_factory.mktemp("tui-colours") / "demo", SEQ)


def cell_colours(grid: Text) -> list[str]:
    """Background colours of the entropy cells of the grid (spans styled '… on #rrggbb')."""
    return [m.group(1) for span in grid.spans for m in [re.search(r" on (#[0-9a-f]{6})", str(span.style))] if m]


async def test_nearly_uniform_entropy_grid_uses_a_sliver_of_the_ramp(demo_run: Path) -> None:
    from inspector.views.attention import head_stats
    from inspector.views.live import open_live
    entropy = head_stats(open_live(demo_run), step=0)["entropy"].to_numpy()
    assert np.ptp(entropy) < 1e-3
    app = InspectorApp(demo_run, frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await wait_until(pilot, lambda: app.settled)
        grid = app.screen.query_one("#entropy-grid", Static).content
        text = str(grid)
        assert f"ln {SEQ} keys" in text and "of max" in text
        colours = cell_colours(grid)
        assert len(colours) == len(entropy) == 8
        drawn = np.array([rgb(c) for c in colours])
        expected = by_hand(ALARM_LOW, float(entropy.mean()) / math.log(SEQ))
        assert np.abs(drawn - expected).max() <= 2                     # one colour, where 2.28 of 3.18 sits
        assert np.ptp(drawn, axis=0).max() <= 2                        # not the ramp's full range
        heat = app.screen.query_one(HeatMap)
        assert heat.scale is not None and (heat.scale.lo, heat.scale.hi) == (0.0, 1.0)
        fills = set(re.findall(r'<rect fill="(#[0-9a-f]{6})"', app.export_screenshot()))
        assert set(colours) <= fills                                   # the SVG draws those cells…
        assert "#800026" not in fills                                  # …and none in the collapse colour


def test_a_uniform_row_stays_flat_on_the_weight_scale() -> None:
    from inspector.views.scales import weight_scale
    row = np.full((2, 16), 1 / 16) + np.linspace(-1e-4, 1e-4, 16)       # nearly uniform rows
    strips = half_block_strips(row, scale=weight_scale(row))
    colours = {seg.style.color.name for seg in strips[0]} | {seg.style.bgcolor.name for seg in strips[0]}
    viridis = np.array([(68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142),
                        (31, 158, 137), (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37)], float)
    assert all(np.abs(rgb(c) - by_hand(viridis, math.sqrt(1 / 16))).max() <= 1 for c in colours)


async def test_expert_bars_are_coloured_by_load_relative_to_balanced() -> None:
    from inspector.views.experts import expert_counts
    from inspector.views.live import open_live
    run_dir = ROOT / "sample_runs" / "healthy-moe"
    layers, counts = expert_counts(open_live(run_dir), step=10**9)
    ratio = counts / counts.mean(1, keepdims=True)
    hot = np.unravel_index(np.argmax(ratio), ratio.shape)
    top = max(2.0, ratio.max())
    diverging = np.array([(5, 48, 97), (33, 102, 172), (67, 147, 195), (146, 197, 222), (247, 247, 247),
                          (244, 165, 130), (214, 96, 77), (178, 24, 43), (103, 0, 31)], float)
    expected = by_hand(diverging, 0.5 + (ratio[hot] - 1) / (top - 1) * 0.5)
    app = InspectorApp(run_dir, frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await wait_until(pilot, lambda: app.settled)
        bars = app.screen.query_one("#experts-bars", Static).content
        assert f"load {ratio.min():.2f}–{ratio.max():.2f}× balanced" in str(bars)
        styles = {str(span.style) for span in bars.spans}
        assert any(s.startswith("#") and np.abs(rgb(s[:7]) - expected).max() <= 1 for s in styles)
