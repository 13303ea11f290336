"""A screen that a plugin registered (`ctx.add_tui_screen`): draws what its render function returns."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from inspector.tui.screens.base import InspectorScreen
from inspector.tui.state import PluginData, Snapshot


def plugin_mode(name: str) -> str:
    """The app mode (and request screen name) of plugin screen `name`."""
    return f"plugin:{name}"


class PluginScreen(InspectorScreen):
    """Title plus the plugin's renderable at the step cursor; a string becomes the message line."""

    PAYLOAD = PluginData

    def __init__(self, name: str, title: str) -> None:
        super().__init__()
        self.NAME = plugin_mode(name)
        self.plugin_title = title

    def compose_body(self) -> ComposeResult:
        """A title line and a scrollable body."""
        yield Static(self.plugin_title, id="plugin-title", classes="title")
        with VerticalScroll(id="plugin-scroll"):
            yield Static("", id="plugin-body")

    def draw(self, payload: PluginData, snap: Snapshot) -> str | None:
        """Show the renderable, or return the plugin's text as the message."""
        self.query_one("#plugin-title", Static).update(f"{self.plugin_title} · step {snap.cursor_step} "
                                                       f"· plugin {payload.plugin}")
        body = self.query_one("#plugin-body", Static)
        if isinstance(payload.renderable, str):
            body.update("")
            return payload.renderable
        body.update(payload.renderable)
        return None
