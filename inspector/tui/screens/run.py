"""Run screen: loss, grad norm and learning-rate sparklines, the step-time share bar, the anomaly feed.

A NaN/±Inf value never vanishes from a sparkline: it is drawn as a full-height bar at its step (the
chart's top edge, the sparkline's max colour) and its label says, in red, "✕ NaN at step 90". The
grad norm is the pre-clip one; its label's title line names the clip threshold when the payload
carries one (inferred from the clipped steps, `views.series.clip_threshold`).
"""
from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Sparkline, Static

from inspector.schema.run_meta import printable
from inspector.tui.screens.base import InspectorScreen
from inspector.tui.state import RUN_SERIES, RunData, Snapshot
from inspector.tui.widgets.bars import share_bar
from inspector.tui.widgets.format import nonfinite_note, num, spark_values

CHART_IDS = {title: title.replace(" ", "-") for title in RUN_SERIES}
MAX_PROBLEM_LINES = 3


class RunScreen(InspectorScreen):
    """The run over time, one rank at a time (`r` picks the rank)."""

    NAME = "run"
    PAYLOAD = RunData
    BINDINGS = [Binding("r", "next_rank", "Next rank"), Binding("enter", "jump", "Jump to anomaly")]

    def compose_body(self) -> ComposeResult:
        """Three charts, the share bar, the anomaly feed."""
        with Vertical(id="charts"):
            for title, cid in CHART_IDS.items():
                with Horizontal(classes="chart"):
                    yield Static(title, id=f"label-{cid}", classes="chart-label")
                    yield Sparkline([], id=f"spark-{cid}", summary_function=max)
        yield Static("", id="shares")
        problems = Static("", id="data-problems")
        problems.display = False
        yield problems
        yield Static("anomalies (newest first · Enter jumps to the step)", classes="title")
        yield DataTable(id="anomalies", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        """Feed columns."""
        feed = self.query_one("#anomalies", DataTable)
        for key in ("step", "rank", "kind", "module", "message"):
            feed.add_column(key, key=key)
        feed.focus()

    def draw(self, payload: RunData, snap: Snapshot) -> str | None:
        """Charts up to the cursor step, shares over the last 50 steps, the feed."""
        for title, cid in CHART_IDS.items():
            df = payload.series[title]
            name = payload.series_names.get(title)
            label = Text(title, style="bold")
            limit = getattr(payload, "clip_threshold", None) if title == "grad norm" else None
            if limit is not None and name is not None:   # on the title line: the label shows three lines
                label.append(f" · clip ≈ {limit:.3g}", style="dim")
            label.append("\n")
            spark = self.query_one(f"#spark-{cid}", Sparkline)
            if name is None or df.empty:
                label.append("not recorded", style="dim")
                spark.data = []
            else:
                values = df["value"].to_numpy(dtype=float)
                finite = values[[math.isfinite(v) for v in values]]
                spark.data = spark_values(values)
                at = payload.at_cursor.get(title, float("nan"))
                label.append(f"{num(at, '{:.4g}', nonfinite=True)} @ step {snap.cursor_step:,}\n")
                if finite.size:
                    label.append(f"min {finite.min():.4g} · max {finite.max():.4g}", style="dim")
                note = nonfinite_note(df["step"].to_numpy(), values)
                if note:
                    label.append(f"\n{note}", style="bold red")
            self.query_one(f"#label-{cid}", Static).update(label)
        shares = self.query_one("#shares", Static)
        if payload.shares:
            width = max(10, self.size.width - 4)
            shown = {k: v for k, v in payload.shares.items() if v > 0 or k != "data"}
            bar = Text(f"step time, last 50 steps of rank {snap.request.rank}\n", style="bold")
            bar.append_text(share_bar(shown, width))
            shares.update(bar)
        else:
            shares.update(Text("step time: no timing recorded in this run", style="dim"))
        self._draw_data_problems(snap.data_problems)
        feed = self.query_one("#anomalies", DataTable)
        row = feed.cursor_row
        feed.clear()
        for i, a in payload.anomalies.iterrows():
            feed.add_row(str(int(a["step"])), str(int(a["rank"])), str(a["kind"]), str(a["module"] or "-"),
                         str(a["message"]), key=str(i))
        if feed.row_count:
            feed.move_cursor(row=min(row, feed.row_count - 1), animate=False)
        if payload.anomalies.empty:
            return "no anomalies recorded in this run"
        return None

    def _draw_data_problems(self, problems: list[str]) -> None:
        """The first few losses or damage the reader found (hidden when there are none)."""
        widget = self.query_one("#data-problems", Static)
        widget.display = bool(problems)
        if problems:
            text = Text(f"⚠ {len(problems)} data problem{'s' if len(problems) != 1 else ''} "
                        "(`inspector info` lists them all)\n", style="bold yellow")
            for line in problems[:MAX_PROBLEM_LINES]:
                text.append(f"  {printable(line, 300)}\n")
            widget.update(text)

    def action_next_rank(self) -> None:
        """Show the next rank."""
        snap = self.inspector.snapshot
        ranks = snap.ranks if snap is not None else []
        if ranks:
            cur = self.inspector.request.rank
            self.inspector.select_rank(ranks[(ranks.index(cur) + 1) % len(ranks)] if cur in ranks else ranks[0])

    def action_jump(self) -> None:
        """Move the step cursor to the highlighted anomaly."""
        snap = self.inspector.snapshot
        if snap is None or not isinstance(snap.payload, RunData) or snap.payload.anomalies.empty:
            return
        feed = self.query_one("#anomalies", DataTable)
        anomalies = snap.payload.anomalies
        if 0 <= feed.cursor_row < len(anomalies):
            self.inspector.set_cursor(int(anomalies.iloc[feed.cursor_row]["step"]))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter in the feed jumps to that anomaly's step."""
        event.stop()
        self.action_jump()
