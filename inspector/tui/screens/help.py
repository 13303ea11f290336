"""The `?` help screen: every key, one line each."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]DeepSeek Inspector — terminal UI[/b]

[b]1 2 3 4 5[/b]    Ranks · Run · Attention · Experts · Inference screens
[b]← →[/b]          step cursor −1 / +1          [b][ ][/b]  −100 / +100
[b]Home End[/b]     first step / newest step (End follows a live run)
[b]space[/b]        play / pause the replay
[b]Ranks[/b]        s sort column · r reverse · click a header · Enter: open that rank · h hang view
[b]Run[/b]          r next rank · Enter on an anomaly: jump to its step
[b]Attention[/b]    l / L layer · h / H head · n / p next / previous recorded map
[b]Experts[/b]      n / p next / previous recorded step
[b]Inference[/b]    ↑ ↓ pick a request · n / p its next / previous attention map · l / L layer · h / H head
[b]?[/b]            this help (Esc closes)       [b]q[/b]  quit
"""


def help_text(plugin_keys: list[tuple[str, str]]) -> str:
    """The key reference, with a line for each plugin screen's (key, title)."""
    lines = [f"[b]{key:<12}[/b] {title} (plugin screen)" for key, title in plugin_keys]
    return HELP + "".join(line + "\n" for line in lines)


class HelpScreen(ModalScreen):
    """Key reference; any of Esc, ? or q closes it."""

    BINDINGS = [Binding("escape", "dismiss", "Close"), Binding("question_mark", "dismiss", "Close"),
                Binding("q", "dismiss", "Close")]

    def __init__(self, plugin_keys: list[tuple[str, str]] | None = None) -> None:
        super().__init__()
        self.plugin_keys = list(plugin_keys or [])

    def compose(self) -> ComposeResult:
        """The help text in a box."""
        with Vertical(id="help-box"):
            yield Static(help_text(self.plugin_keys), id="help-text")
