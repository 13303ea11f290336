"""The `?` help screen: every key, one line each."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]DeepSeek Inspector — terminal UI[/b]

[b]1 2 3 4[/b]      Ranks · Run · Attention · Experts screens
[b]← →[/b]          step cursor −1 / +1          [b][ ][/b]  −100 / +100
[b]Home End[/b]     first step / newest step (End follows a live run)
[b]space[/b]        play / pause the replay
[b]Ranks[/b]        s sort column · r reverse · click a header · Enter: open that rank
[b]Run[/b]          r next rank · Enter on an anomaly: jump to its step
[b]Attention[/b]    l / L layer · h / H head · n / p next / previous recorded map
[b]Experts[/b]      n / p next / previous recorded step
[b]?[/b]            this help (Esc closes)       [b]q[/b]  quit
"""


class HelpScreen(ModalScreen):
    """Key reference; any of Esc, ? or q closes it."""

    BINDINGS = [Binding("escape", "dismiss", "Close"), Binding("question_mark", "dismiss", "Close"),
                Binding("q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        """The help text in a box."""
        with Vertical(id="help-box"):
            yield Static(HELP, id="help-text")
