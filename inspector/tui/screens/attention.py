"""Attention screen: one layer/head map in half blocks (weights on 0 … 1), a layer × head entropy grid
(0 … ln keys, dark red = low) and a per-head entropy table with collapsed heads."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static

from inspector.tui.screens.base import InspectorScreen
from inspector.tui.state import AttentionData, Snapshot
from inspector.tui.widgets.heatmap import HeatMap
from inspector.tui.widgets.ramp import hex_colour, ramp_rgb, stops_for
from inspector.views.scales import Scale, weight_scale

if TYPE_CHECKING:
    import pandas as pd


def legend(scale: Scale, width: int = 16) -> Text:
    """The colour ramp from `scale.lo` to `scale.hi`, then what it spans and what the data spans."""
    text = Text(f"{scale.lo:.3g} ")
    for rgb in ramp_rgb(np.linspace(0, 1, width), stops_for(scale.alarm)):
        text.append("█", style=hex_colour(rgb))
    text.append(f" {scale.hi:.3g}  {scale.label}")
    return text


def cell_colour(scale: Scale, value: float) -> str:
    """The '#rrggbb' colour of `value` on `scale`."""
    return hex_colour(ramp_rgb(scale.position(value), stops_for(scale.alarm)))


def entropy_grid(stats: pd.DataFrame, scale: Scale, width: int = 44) -> Text:
    """Layer rows × head columns of colour cells (✖ = collapsed), under the scale's legend."""
    text = legend(scale, 12)
    if stats.empty:
        return text
    heads = sorted(int(h) for h in stats["head"].unique())
    cell = 2 if 4 + 2 * len(heads) <= width else 1
    by_key = {(int(r.layer), int(r.head)): r for r in stats.itertuples()}
    if cell == 2:
        text.append("\nH   " + "".join(f"{h % 100:<2}" for h in heads), style="dim")
    for layer in sorted(int(l) for l in stats["layer"].unique()):
        text.append(f"\nL{layer:<3}", style="dim")
        for head in heads:
            row = by_key.get((layer, head))
            if row is None:
                text.append(" " * cell)
                continue
            if not np.isfinite(row.entropy):
                text.append("?".ljust(cell), style="dim")
                continue
            mark = ("✖" if bool(row.collapsed) else " ").ljust(cell)
            text.append(mark, style=f"bold white on {cell_colour(scale, float(row.entropy))}")
    return text


def map_title(p: AttentionData, rows: int, keys: int) -> Text:
    """'layer 0 1/2 · head 3 4/4 · step 50 map 6/6 · 16 queries × 16 keys'."""
    return Text.assemble(
        (f"layer {p.layer}", "bold"), f" {p.layers.index(p.layer) + 1}/{len(p.layers)} · ",
        (f"head {p.head}", "bold"), f" {p.heads.index(p.head) + 1}/{len(p.heads)} · ",
        (f"step {p.step:,}", "bold"), f" map {p.steps.index(p.step) + 1}/{len(p.steps)} · ",
        f"{rows} queries × {keys} keys" if p.pools is None else
        f"{p.pools[2]:,} × {p.pools[3]:,} pooled {p.pools[0]}×{p.pools[1]}")


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
                yield Static("", id="entropy-grid")
                yield DataTable(id="head-stats", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        """Head table columns."""
        table = self.query_one("#head-stats", DataTable)
        for key in ("layer", "head", "entropy", "max w", "collapsed"):
            table.add_column(key, key=key)

    def draw(self, payload: AttentionData, snap: Snapshot) -> str | None:
        """Map, legend and table; a one-line message when nothing was recorded."""
        from inspector.views.attention import head_entropy_scale  # loaded on the poller's thread first: cheap here

        heat = self.query_one(HeatMap)
        table = self.query_one("#head-stats", DataTable)
        self.query_one("#entropy-grid", Static).update(
            entropy_grid(payload.stats, head_entropy_scale(payload.stats)) if len(payload.stats) else "")
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
        scale = weight_scale(payload.matrix)
        heat.set_matrix(payload.matrix, scale)
        title.update(map_title(payload, *payload.matrix.shape))
        key.update(legend(scale))
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
