"""Hang screen: the verdict's headline, the desynchronised collectives, the stuck ranks and the frames
of the ranks it names. Reached with `h` from the Ranks screen; `Esc` goes back.

The poller computes the verdict (`views.hang`); this screen only draws the `HangData` it is given.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from inspector.schema.run_meta import printable
from inspector.tui.screens.base import InspectorScreen
from inspector.tui.state import Snapshot

if TYPE_CHECKING:
    from inspector.views.hang import HangVerdict, StuckRow

COLUMNS = [("ranks", "rank"), ("state", "state"), ("where", "where"), ("step", "step"), ("phase", "phase"),
           ("module", "module"), ("collective", "collective"), ("stalled", "stalled"), ("host", "host:pid")]


@dataclass
class HangData:
    """Hang screen: the verdict (None: nothing is stuck) and its stuck-ranks table."""

    verdict: HangVerdict | None
    rows: list[StuckRow] = field(default_factory=list)


def _clip(value: Any, limit: int = 120) -> str:
    return printable(str(value), limit)


def _rank_text(ranks: list[int]) -> str:
    from inspector.views.hang import rank_list   # views load on the poller's thread first; cheap here

    return rank_list(ranks, limit=4)


def frames_text(verdict: HangVerdict) -> Text:
    """The named ranks' main-thread frames, the user's first, then the innermost one."""
    text = Text()
    for s in verdict.named:
        if not s.frames and s.innermost is None:
            if s.stuck:
                text.append(f"rank {s.rank}: no stack dump", style="bold")
                text.append(" (stopped before its watchdog saw a stall)\n" if s.state == "stopped reporting" else "\n")
            continue
        when = f", written {time.strftime('%H:%M:%S', time.gmtime(s.dump_time))} UTC" if s.dump_time else ""
        text.append(f"rank {s.rank}", style="bold")
        text.append(f" main thread ({_clip(s.dump, 40)}{when}), most recent call first:\n")
        for f in s.frames:
            text.append(f"  {_clip(f.where, 60)}", style="bold")
            text.append(f" in {_clip(f.function, 50)}  ")
            text.append(f"{_clip(f.file, 120)}\n", style="dim")
        if s.innermost is not None:
            f = s.innermost
            text.append(f"  innermost: {_clip(f.where, 60)} in {_clip(f.function, 50)}  ")
            text.append(f"{_clip(f.file, 120)}\n", style="dim")
    return text


def headline_text(verdict: HangVerdict) -> Text:
    """" HANG  headline" in red, then one line per desynchronised collective."""
    text = Text()
    text.append(" HANG ", style="bold white on red")
    text.append(" " + _clip(verdict.headline, 400), style="bold red")
    for d in verdict.desyncs:
        line = d.line()
        if line not in verdict.headline:
            text.append("\n desynchronised: ", style="red")
            text.append(_clip(line, 300))
    if verdict.silent:
        text.append(f"\n no heartbeat at all from rank(s) {_rank_text(verdict.silent)}", style="red")
    for p in verdict.problems[:2]:
        text.append("\n " + _clip(p, 200), style="yellow")
    return text


class HangScreen(InspectorScreen):
    """Which ranks are stuck, where, and who is missing from which collective."""

    NAME = "hang"
    PAYLOAD = HangData
    BINDINGS = [Binding("escape", "back", "Back to ranks"), Binding("h", "back", "Back", show=False)]

    def compose_body(self) -> ComposeResult:
        """Headline, stuck-ranks table, frames."""
        yield Static("", id="hang-headline")
        yield Static("", id="hang-title", classes="title")
        yield DataTable(id="hang-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="hang-frames-box"):
            yield Static("", id="hang-frames")

    _drawn: HangData | None = None

    def on_mount(self) -> None:
        """Table columns."""
        table = self.query_one("#hang-table", DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        super().on_mount()

    def draw(self, payload: HangData, snap: Snapshot) -> str | None:
        """The verdict, or a line saying no rank is stuck (nothing is redrawn while it stays the same:
        the table keeps its cursor, and its layout is not redone at every poll)."""
        if payload == self._drawn:
            return None
        self._drawn = payload
        v = payload.verdict
        headline = self.query_one("#hang-headline", Static)
        table = self.query_one("#hang-table", DataTable)
        table.clear()
        if v is None:
            headline.update(Text("no hang: every rank is making progress (or the run finished)", style="bold green"))
            self.query_one("#hang-title", Static).update("")
            self.query_one("#hang-frames", Static).update("")
            return None
        headline.update(headline_text(v))
        gone = " · processes gone: last state" if v.processes_gone else ""
        self.query_one("#hang-title", Static).update(f"stuck ranks: {len(v.stuck)} of {v.world_size}{gone}")
        for row in payload.rows:
            stalled = row.stalled_text
            style = "bold" if row.named else ""
            table.add_row(*(Text(_clip(c, 40), style=style) for c in (
                _rank_text(row.ranks), row.state, row.where, row.step, row.phase, row.module, row.collective,
                stalled, row.host)))
        self.query_one("#hang-frames", Static).update(frames_text(v))
        return None

    def action_back(self) -> None:
        """Back to the Ranks screen."""
        self.inspector.action_screen("ranks")
