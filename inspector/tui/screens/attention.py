"""Attention screen: one layer/head map in half blocks, a per-head entropy table with collapsed heads."""
from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static

from inspector.tui.screens.base import InspectorScreen
from inspector.tui.state import AttentionData, Snapshot
from inspector.tui.widgets.heatmap import HeatMap
from inspector.tui.widgets.ramp import hex_colour, ramp_rgb


def legend(top: float, width: int = 16) -> Text:
    """The colour ramp from 0 to `top` (square-root scale)."""
    text = Text("0 ")
    for rgb in ramp_rgb(np.linspace(0, 1, width)):
        text.append("█", style=hex_colour(rgb))
    text.append(f" {top:.3g}  (√ scale)")
    return text


def map_title(p: AttentionData, rows: int, keys: int) -> Text:
    """'layer 0 1/2 · head 3 4/4 · step 50 map 6/6 · 16 queries × 16 keys'."""
    return Text.assemble(
        (f"layer {p.layer}", "bold"), f" {p.layers.index(p.layer) + 1}/{len(p.layers)} · ",
        (f"head {p.head}", "bold"), f" {p.heads.index(p.head) + 1}/{len(p.heads)} · ",
        (f"step {p.step:,}", "bold"), f" map {p.steps.index(p.step) + 1}/{len(p.steps)} · ",
        f"{rows} queries × {keys} keys")


class AttentionScreen(InspectorScreen):
    """Pick a layer (l/L), head (h/H) and recorded step (n/p)."""

    NAME = "attention"
    PAYLOAD = AttentionData
    BINDINGS = [Binding("l", "layer(1)", "Layer", key_display="l/L"), Binding("L", "layer(-1)", "Layer-", show=False),
                Binding("h", "head(1)", "Head", key_display="h/H"), Binding("H", "head(-1)", "Head-", show=False),
                Binding("n", "step(1)", "Map step", key_display="n/p"),
                Binding("p", "step(-1)", "Prev map", show=False)]

    def compose_body(self) -> ComposeResult:
        """Map (with title and legend) on the left, head table on the right."""
        with Horizontal():
            with Vertical(id="map-pane"):
                yield Static("", id="map-title", classes="title")
                yield HeatMap(id="heatmap")
                yield Static("", id="map-legend")
            with Vertical(id="heads-pane"):
                yield Static("per-head entropy (✖ collapsed)", classes="title")
                yield DataTable(id="head-stats", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        """Head table columns."""
        table = self.query_one("#head-stats", DataTable)
        for key in ("layer", "head", "entropy", "max w", "collapsed"):
            table.add_column(key, key=key)

    def draw(self, payload: AttentionData, snap: Snapshot) -> str | None:
        """Map, legend and table; a one-line message when nothing was recorded."""
        heat = self.query_one(HeatMap)
        table = self.query_one("#head-stats", DataTable)
        table.clear()
        for _, row in payload.stats.iterrows():
            collapsed = bool(row["collapsed"])
            style = "bold red" if collapsed else ""
            here = int(row["layer"]) == payload.layer and int(row["head"]) == payload.head
            table.add_row(Text(str(int(row["layer"])), style=style), Text(str(int(row["head"])), style=style),
                          Text(f"{row['entropy']:.3f}", style=style), Text(f"{row['max_weight']:.3f}", style=style),
                          Text(("✖ collapsed" if collapsed else "") + (" ◀" if here else ""), style=style))
        title = self.query_one("#map-title", Static)
        key = self.query_one("#map-legend", Static)
        if payload.matrix is None:
            heat.set_matrix(None)
            title.update("")
            key.update("")
            if not payload.steps:
                return "no attention maps recorded in this run"
            return f"no map for layer {payload.layer} head {payload.head} at step {payload.step}"
        heat.set_matrix(payload.matrix)
        title.update(map_title(payload, *payload.matrix.shape))
        key.update(legend(float(payload.matrix.max())))
        return None

    def _payload(self) -> AttentionData | None:
        snap = self.inspector.snapshot
        return snap.payload if snap is not None and isinstance(snap.payload, AttentionData) else None

    def action_layer(self, delta: int) -> None:
        """Next/previous recorded layer."""
        p = self._payload()
        if p and p.layers and p.layer is not None:
            here = self.inspector.request.layer if self.inspector.request.layer in p.layers else p.layer
            self.inspector.update_request(layer=p.layers[(p.layers.index(here) + delta) % len(p.layers)])

    def action_head(self, delta: int) -> None:
        """Next/previous recorded head."""
        p = self._payload()
        if p and p.heads and p.head is not None:
            here = self.inspector.request.head if self.inspector.request.head in p.heads else p.head
            self.inspector.update_request(head=p.heads[(p.heads.index(here) + delta) % len(p.heads)])

    def action_step(self, delta: int) -> None:
        """Move the step cursor to the next/previous step with attention maps."""
        p = self._payload()
        if p:
            self.jump_recorded(p.steps, delta)
