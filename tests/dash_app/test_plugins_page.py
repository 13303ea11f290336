"""The Plugins page draws the panels plugins registered (the built-in weight_norm example)."""
from __future__ import annotations

import numpy as np
from playwright.sync_api import expect

from inspector.plugins import load_plugins
from inspector.store.recorder import Recorder
from tests.dash_app.conftest import artifacts_dir, dash_server
from tests.dash_app.helpers import wait_figure

BLOCKS = ["layers.0", "layers.1", "layers.2"]


def test_weight_norm_panel(page, tmp_path):
    load_plugins()                      # registers the plugin's record kind, as watch() does
    norms = {step: [1.0 + 0.1 * i + 0.01 * step for i in range(len(BLOCKS))] for step in range(0, 50, 10)}
    with Recorder(tmp_path / "wn", rank=0, world_size=1) as rec:
        for step, values in norms.items():
            rec.scalar("loss", 1.0, step=step)
            rec.submit("weight_norm", {"name": BLOCKS, "norm": values, "rms": values}, len(BLOCKS), step=step)
    with dash_server(tmp_path) as server:
        page.goto(f"{server.url}/plugins?run=wn")
        expect(page.locator("#run-header .status")).to_have_text("finished")
        fig = wait_figure(page, "plugin-weight_norm")
        heat = fig["data"][0]
        assert heat["y"] == BLOCKS and heat["x"] == sorted(norms)
        np.testing.assert_allclose(np.array(heat["z"], float), np.array([norms[s] for s in sorted(norms)]).T)
        expect(page.locator("#plugin-weight_norm")).to_be_visible()
        assert page.get_by_text("Weight norm per block").count() == 1  # the panel header, not repeated by the figure
        page.screenshot(path=str(artifacts_dir() / "plugins.png"), full_page=True)
        assert page.errors == []


def test_plugins_page_on_a_run_without_plugin_records(page, live_dash):
    page.goto(f"{live_dash.url}/plugins?run=a")
    fig = wait_figure(page, "plugin-weight_norm", "f => f && f.empty")
    assert "no weight norms recorded" in str(fig["empty"])
    assert page.errors == []
