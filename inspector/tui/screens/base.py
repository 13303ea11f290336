"""The common frame of every screen: run bar on top, a one-line message, the footer with keys."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Static

from inspector.tui.state import Snapshot
from inspector.tui.widgets.keybar import KeyBar
from inspector.tui.widgets.runbar import RunBar, runbar_text

if TYPE_CHECKING:
    from inspector.tui.app import InspectorApp


class InspectorScreen(Screen):
    """A screen that draws one payload type from the app's snapshots (see `draw`)."""

    NAME = ""
    PAYLOAD: type | tuple[type, ...] | None = None
    _drawn = False
    ready = False
    shown_serial = -1
    _drawn_payload: object = None

    def compose(self) -> ComposeResult:
        """Run bar, message line, the screen's body, footer."""
        yield RunBar(id="runbar")
        yield Static("", id="message")
        yield from self.compose_body()
        yield KeyBar()

    def compose_body(self) -> ComposeResult:
        """The screen's own widgets."""
        yield from ()

    @property
    def inspector(self) -> "InspectorApp":
        """The app, typed."""
        return self.app  # type: ignore[return-value]

    def on_mount(self) -> None:
        """Mark the screen ready and draw the newest snapshot once laid out."""
        self.ready = True
        self.call_after_refresh(self.on_screen_resume)

    def on_resize(self) -> None:
        """Widths changed: draw again."""
        if self._drawn:
            self.redraw()

    def on_screen_resume(self) -> None:
        """Redraw from the newest snapshot when the screen comes back."""
        if self.inspector.snapshot is not None:
            self.show(self.inspector.snapshot)

    def show(self, snap: Snapshot) -> None:
        """Draw `snap`: the run bar always, the body when the snapshot holds this screen's payload."""
        self.shown_serial = snap.serial
        self.query_one(RunBar).update(runbar_text(snap, self.NAME, playing=self.inspector.playing))
        if snap.error:
            self.set_message(snap.error)
            return
        if snap.problem and snap.request.screen == self.NAME:
            self.set_message(snap.problem)
            return
        payload = snap.payload
        if self.PAYLOAD is None or not isinstance(payload, self.PAYLOAD) or snap.request.screen != self.NAME:
            if not self._drawn:
                self.set_message("loading…")
            return
        self._drawn = True
        if payload is self._drawn_payload:
            return
        self._drawn_payload = payload
        self.set_message(self.draw(payload, snap))

    def redraw(self) -> None:
        """Draw the newest snapshot again (after a local change such as the sort order)."""
        self._drawn_payload = None
        if self.inspector.snapshot is not None:
            self.show(self.inspector.snapshot)

    def jump_recorded(self, steps: list[int], delta: int) -> None:
        """Move the cursor `delta` recorded steps from the recorded step at or before the cursor."""
        from inspector.views.steps import nearest_at_or_before

        if not steps:
            return
        app = self.inspector
        here = app.request.cursor if app.request.cursor is not None else \
            (app.snapshot.cursor_step if app.snapshot is not None else steps[-1])
        base = nearest_at_or_before(steps, here)
        i = max(0, min(len(steps) - 1, steps.index(base) + delta))
        app.set_cursor(steps[i])

    def set_message(self, text: str | None) -> None:
        """Show a one-line message above the body (None hides it)."""
        message = self.query_one("#message", Static)
        message.display = bool(text)
        message.update(text or "")

    def draw(self, payload: Any, snap: Snapshot) -> str | None:
        """Draw the payload; return a one-line message to show (e.g. 'no attention recorded'), or None."""
        return None
