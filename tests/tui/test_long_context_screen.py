"""The Attention screen on sample_runs/long-context-32k says its map is pooled, and by how much."""
from __future__ import annotations

import pytest
from textual.widgets import Static

from inspector.tui.app import InspectorApp
from inspector.tui.widgets.heatmap import HeatMap
from inspector.views.live import LiveRun
from tests.conftest import ROOT
from tests.tui.conftest import FROZEN_NOW, wait_until

pytestmark = pytest.mark.anyio
LONG = ROOT / "sample_runs" / "long-context-32k"


async def test_attention_screen_states_the_pooling() -> None:
    row = LiveRun(LONG).reader.blob_rows("attention_map", step=0)[0]
    app = InspectorApp(LONG, frozen_now=FROZEN_NOW)
    async with app.run_test(size=(130, 38)) as pilot:
        await pilot.press("3")
        await wait_until(pilot, lambda: app.settled and app.screen.query("#map-title")
                         and "pooled" in str(app.screen.query_one("#map-title", Static).render()))
        title = str(app.screen.query_one("#map-title", Static).render())
        assert (f"{row['query_len']:,} × {row['key_len']:,} pooled {row['row_pool']}×{row['key_pool']}"
                in title)
        assert app.screen.query_one(HeatMap).matrix.shape == (128, 128)
