"""Ranks screen: one row per rank, stragglers in red, a min/median/max summary below; a red banner on
top with the hang verdict's headline while some rank is stuck (`h` opens the hang view)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from inspector.tui.screens.base import InspectorScreen
from inspector.tui.first_frame import READING, ROLL_CALL_ROWS, missing_ranks, roll_rows
from inspector.tui.state import RanksData, RollCallData, Snapshot
from inspector.tui.widgets.rank_table import COLUMNS, SORTABLE, WIDTHS, RankTable, cells

if TYPE_CHECKING:
    from inspector.views.hang import HangVerdict

LABELS = dict(COLUMNS)
SORT_LABELS = {"straggler_score": "how long each holds the step up (straggler score), grouped by node"}


@dataclass
class RanksPayload(RanksData):
    """The Ranks screen's payload with the hang verdict the poller computed (None: nothing stuck)."""

    hang: HangVerdict | None = None


def banner_text(verdict: HangVerdict) -> Text:
    """" HANG  <headline>  (h: hang view)" in red; "processes gone" when nothing reports any more."""
    from inspector.schema.run_meta import printable

    text = Text()
    text.append(" HANG ", style="bold white on red")
    text.append(f" {printable(verdict.headline, 400)}", style="bold")
    text.append("   h: hang view", style="italic")
    return text


class RanksScreen(InspectorScreen):
    """Every rank of the job: progress, speed, loss, GPU state, status and straggler flag."""

    NAME = "ranks"
    PAYLOAD = (RanksData, RollCallData)
    BINDINGS = [Binding("s", "sort", "Sort column"), Binding("r", "reverse", "Reverse"),
                Binding("enter", "open_rank", "Show rank"), Binding("h", "hang", "Hang view")]

    sort_key = "straggler_score"
    descending = True

    def compose_body(self) -> ComposeResult:
        """Hang banner (hidden while nothing is stuck), title, rank table, summary table."""
        banner = Static("", id="hang-banner")
        banner.display = False
        yield banner
        yield Static("", id="ranks-title", classes="title")
        yield RankTable(id="rank-table", cursor_type="row", zebra_stripes=True)
        yield Static("min / median / max over ranks", classes="title")
        yield DataTable(id="rank-summary", cursor_type="none", show_cursor=False)

    def on_mount(self) -> None:
        """Summary columns match the rank table's."""
        summary = self.query_one("#rank-summary", DataTable)
        for key, label in COLUMNS:
            summary.add_column("" if key in ("rank", "node", "straggler_score", "status", "history") else label, key=key, width=WIDTHS[key])
        self.query_one(RankTable).focus()

    def draw(self, payload: RanksData | RollCallData, snap: Snapshot) -> str | None:
        """Fill both tables and the hang banner; the message names the stragglers."""
        if isinstance(payload, RollCallData):
            return self._draw_roll_call(payload)
        verdict = getattr(payload, "hang", None)
        banner = self.query_one("#hang-banner", Static)
        banner.display = verdict is not None
        banner.update(banner_text(verdict) if verdict is not None else "")
        table = payload.table
        if table.empty:
            return "no rank has recorded anything yet"
        rank_table = self.query_one(RankTable)
        rank_table.styles.max_height = max(4, self.size.height - 14 - (banner.size.height if verdict else 0))
        rank_table.show(table, payload.history, self.sort_key, self.descending)
        summary = self.query_one("#rank-summary", DataTable)
        summary.clear()
        for label, row in payload.summary.iterrows():
            summary.add_row(*cells({"rank": str(label), **row.to_dict()}))
        flagged = table[table["straggler"].astype(bool)]
        stragglers = flagged["rank"].astype(int).tolist()
        arrow = "↓" if self.descending else "↑"
        where = "newest steps" if payload.at is None else f"steps up to {payload.at:,}"
        self.query_one("#ranks-title", Static).update(
            f"{len(table)} ranks · {where} · sorted by {SORT_LABELS.get(self.sort_key, LABELS[self.sort_key])} {arrow} · "
            f"{len(stragglers)} straggler{'s' if len(stragglers) != 1 else ''}"
            + (f": rank {', '.join(map(str, stragglers))}" if stragglers else ""))
        if stragglers:
            reasons = "; ".join(f"rank {int(r.rank)}: {r.straggler_reason}" for r in flagged.head(3).itertuples())
            return f"⚠ straggler: rank {', '.join(map(str, stragglers))} — {reasons}"
        return None

    def _draw_roll_call(self, payload: RollCallData) -> str:
        """The roll call while the records are read: the ranks likeliest to be in trouble first."""
        roll = payload.roll
        visible = max(4, self.size.height - 14)
        rows = roll_rows(roll, payload.now, limit=min(visible, ROLL_CALL_ROWS))   # a table's first draw costs per row
        rank_table = self.query_one(RankTable)
        rank_table.styles.max_height = visible
        rank_table.show_rows(rows)
        hosts = len(roll.hosts)
        listed = f"{len(rows):,} listed: " if len(rows) < len(roll.ranks) else ""
        self.query_one("#ranks-title", Static).update(
            f"{len(roll.ranks):,} ranks on {hosts:,} node{'s' if hosts != 1 else ''} · {listed}open files and the "
            f"oldest heartbeats first, then by node (from their rank, closed and heartbeat files)")
        missing = missing_ranks(roll)
        gone = f"{missing:,} of {roll.world_size:,} ranks have no directory · " if missing else ""
        return f"{gone}{READING} (every rank, the straggler score, step times and GPU state follow)"

    def action_hang(self) -> None:
        """Open the hang view."""
        self.inspector.action_screen("hang")

    def action_sort(self) -> None:
        """Sort by the next column."""
        self.sort_key = SORTABLE[(SORTABLE.index(self.sort_key) + 1) % len(SORTABLE)]
        self.descending = self.sort_key not in ("rank", "node", "status")
        self.redraw()

    def action_reverse(self) -> None:
        """Reverse the sort order."""
        self.descending = not self.descending
        self.redraw()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        """Clicking a column header sorts by it (again: reverses)."""
        key = str(event.column_key.value)
        if key not in SORTABLE or event.data_table.id != "rank-table":
            return
        self.descending = (not self.descending) if key == self.sort_key else key not in ("rank", "node", "status")
        self.sort_key = key
        self.redraw()

    def action_open_rank(self) -> None:
        """Show the highlighted rank on the Run screen."""
        table = self.query_one(RankTable)
        if table.row_count:
            rank = int(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
            self.inspector.select_rank(rank)
            self.inspector.action_screen("run")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a rank row opens it."""
        event.stop()
        self.action_open_rank()

