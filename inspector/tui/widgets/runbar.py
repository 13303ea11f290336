"""The two lines at the top of every screen: the run header, the screen tabs and the step cursor."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from inspector.tui.state import SCREENS, Snapshot

TITLES = {"ranks": "Ranks", "run": "Run", "attention": "Attention", "experts": "Experts", "inference": "Inference"}
STATUS_STYLE = {"live": "bold green", "finished": "bold blue", "crashed": "bold red", "damaged": "bold red",
                "failed": "bold red", "empty": "bold yellow"}


def runbar_text(snap: Snapshot | None, screen: str, *, playing: bool) -> Text:
    """Header line, then the tab strip with the step cursor (following / replay position)."""
    text = Text()
    if snap is None:
        text.append("opening run…")
    elif snap.error:
        text.append(snap.error, style="bold yellow")
    else:
        text.append(snap.header, style=STATUS_STYLE.get(snap.status, ""))
    text.append("\n")
    for i, name in enumerate(SCREENS, 1):
        style = "reverse bold" if name == screen else "dim"
        text.append(f" {i} {TITLES[name]} ", style=style)
        text.append(" ")
    if snap is not None and snap.error is None and snap.last_step >= 0:
        cursor = snap.request.cursor
        if cursor is None:
            mode = "following newest step" if snap.status == "live" else "at last step"
            text.append(f"  step {snap.last_step:,} ({mode})", style="bold")
        else:
            text.append(f"  replay step {cursor:,} / {snap.last_step:,}", style="bold magenta")
        text.append("  ▶ playing" if playing else "", style="bold magenta")
        if snap.request.rank:
            text.append(f"  rank {snap.request.rank}", style="bold cyan")
    return text


class RunBar(Static):
    """Shows `runbar_text` for the latest snapshot."""

    DEFAULT_CSS = "RunBar { height: 2; background: $boost; padding: 0 1; }"
