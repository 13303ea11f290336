"""A screen registered by a plugin (the built-in weight_norm example) opens with its key."""
from __future__ import annotations

import io

import pytest
from rich.console import Console
from textual.widgets import Static

from inspector.plugins import load_plugins
from inspector.store.recorder import Recorder
from inspector.tui.app import InspectorApp
from inspector.tui.screens.help import HelpScreen
from inspector.tui.screens.plugin import PluginScreen
from tests.tui.conftest import FROZEN_NOW, wait_until

pytestmark = pytest.mark.anyio
BLOCKS = ["layers.0", "layers.1"]


def _body(app: InspectorApp) -> str:
    """The text the plugin screen shows (its renderable drawn by rich)."""
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(app.screen.query_one("#plugin-body", Static).content)
    return console.export_text()


async def test_weight_norm_screen(tmp_path) -> None:
    load_plugins()                            # registers the plugin's record kind, as watch() does
    with Recorder(tmp_path / "wn", rank=0, world_size=1) as rec:
        for step in (0, 10, 20):
            rec.scalar("loss", 1.0, step=step)
            values = [2.0 + step / 10, 3.0 + step / 5]
            rec.submit("weight_norm", {"name": BLOCKS, "norm": values, "rms": values}, 2, step=step)
    app = InspectorApp(tmp_path / "wn", frozen_now=FROZEN_NOW)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: "plugin:weight_norm" in app.plugin_modes)
        await pilot.press("w")
        await wait_until(pilot, lambda: isinstance(app.screen, PluginScreen) and app.settled)
        lines = _body(app).splitlines()
        row0 = next(line for line in lines if "layers.0" in line)
        row1 = next(line for line in lines if "layers.1" in line)
        assert row0.split()[3:6:2] == ["4", "2.000"]                   # step 20: 2 + 2, and 4 / 2
        assert row1.split()[3:6:2] == ["7", "2.333"]                   # 3 + 4, and 7 / 3
        await pilot.press("home")                                        # the step cursor drives it
        await wait_until(pilot, lambda: app.settled and "step ≤ 0" in _body(app))
        assert "1.000" in _body(app)


def _app_on_a_run_without_weight_norms(tmp_path) -> InspectorApp:
    """The app on a one-step run that recorded only a loss."""
    with Recorder(tmp_path / "plain", rank=0, world_size=1) as rec:
        rec.scalar("loss", 1.0, step=0)
    return InspectorApp(tmp_path / "plain", frozen_now=FROZEN_NOW)


async def test_weight_norm_screen_without_records(tmp_path) -> None:
    app = _app_on_a_run_without_weight_norms(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: "plugin:weight_norm" in app.plugin_modes)
        await pilot.press("w")
        await wait_until(pilot, lambda: isinstance(app.screen, PluginScreen) and app.settled)
        message = app.screen.query_one("#message", Static)
        assert "no weight norms recorded" in str(message.render())


async def test_help_lists_the_plugin_screen_keys(tmp_path) -> None:
    app = _app_on_a_run_without_weight_norms(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: "plugin:weight_norm" in app.plugin_modes)
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = str(app.screen.query_one("#help-text", Static).render())
        title = next(s.title for s in load_plugins().tui_screens if s.name == "weight_norm")
        assert any(line.split()[:1] == ["w"] and f"{title} (plugin screen)" in line for line in text.splitlines())
