"""Inference screen: a run recorded in inference mode, as a serving engineer reads it.

Left: headline numbers, request-latency percentiles, throughput / batch / waiting / KV-cache
sparklines over the run, and expert load per layer in prefill and decode (one cell per expert,
blue starved … white 1× … red hot, the hottest expert named). Right: the requests, slowest end to
end first (↑/↓ picks one), that request's per-token latency, and what one of its recorded queries
attended to: every cached token's text on a background as bright as its weight (n/p: other
queries of the request, l/L layer, h/H head).
"""
from __future__ import annotations

import numpy as np
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Static

from inspector.tui.screens.base import InspectorScreen
from inspector.tui.state import InferenceData, Snapshot
from inspector.tui.widgets.format import num
from inspector.tui.widgets.ramp import DIVERGING, VIRIDIS, hex_colour, ramp_rgb, text_sparkline
from inspector.views.scales import load_ratio, load_scale, weight_scale

NARROW_COLS = 120
"""Terminal width below which the run-wide panes and the request viewer are stacked."""
NO_RUN = "no inference records in this run: record generation with inspector.watch(model, run, mode=\"inference\")"


def binned(values: np.ndarray, width: int) -> np.ndarray:
    """`values` averaged into at most `width` equal bins (so a sparkline spans the whole run)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size <= width or width <= 0:
        return v
    return np.array([np.nanmean(part) if np.isfinite(part).any() else np.nan for part in np.array_split(v, width)])


def headline(p: InferenceData) -> Text:
    """Requests, iterations, tokens/s by stage, TTFT and TPOT percentiles, peak batch and KV cache;
    what the Inspector's own sampled iterations add to those latencies, when measurable."""
    t = p.totals
    lat = p.latency.set_index("metric")
    kv = "N/A" if t.peak_kv_cache_bytes != t.peak_kv_cache_bytes else \
        f"{t.peak_kv_cache_bytes / 2**20:,.2f} MiB (decompressed {t.peak_kv_cache_decompressed_bytes / 2**20:,.2f})"
    return Text.assemble(
        (f"{t.requests:,} requests", "bold"), f" · {t.iterations:,} iterations · ",
        (f"{num(t.generation_tokens_per_s, '{:,.1f}')} tok/s", "bold"),
        f" (prefill {num(t.prefill_tokens_per_s, '{:,.0f}')}, decode {num(t.decode_tokens_per_s, '{:,.1f}')}) · "
        f"TTFT p50/p95 {num(lat.loc['TTFT', 'p50'], '{:,.1f}')}/{num(lat.loc['TTFT', 'p95'], '{:,.1f}')} ms · "
        f"TPOT p50/p95 {num(lat.loc['TPOT', 'p50'], '{:,.1f}')}/{num(lat.loc['TPOT', 'p95'], '{:,.1f}')} ms · "
        f"peak batch {t.peak_batch} · KV peak {kv}",
        *([(f"\nthe Inspector's own sampled work: {p.sampled} (in these latencies)", "dim")] if p.sampled else []))


def latency_table(p: InferenceData) -> Table:
    """Percentiles of each request latency, in ms."""
    table = Table(title="request latency (ms)", title_justify="left", expand=False, padding=(0, 1))
    for col in p.latency.columns:
        table.add_column(str(col), justify="left" if col == "metric" else "right")
    for row in p.latency.itertuples(index=False):
        table.add_row(str(row[0]), str(row[1]), *(num(v, "{:,.1f}") for v in row[2:]))
    return table


def series_lines(p: InferenceData, width: int) -> Text:
    """One labelled sparkline per time series, scaled from 0, with its range."""
    text = Text()
    if p.series.empty:
        return text
    rows = [("generated tok/s", "generation_tokens_per_s", 1.0), ("prompt tok/s", "prompt_tokens_per_s", 1.0),
            ("running (batch)", "batch_size", 1.0), ("waiting", "num_requests_waiting", 1.0),
            ("KV cache usage %", "kv_cache_usage_perc", 100.0)]
    for label, col, factor in rows:
        v = binned(p.series[col].to_numpy(dtype=np.float64) * factor, width)
        if not np.isfinite(v).any():
            continue
        hi = float(np.nanmax(v))
        text.append(f"{label:<17}", style="bold")
        text.append(text_sparkline(v, width, lo=0.0, hi=hi if hi > 0 else 1.0), style="#4c9be8")
        text.append(f" 0…{hi:,.4g}\n", style="dim")
    text.append(f"{'':17}← {p.series['time_s'].iloc[-1]:.2f} s of generation →", style="dim")
    return text


def expert_rows(p: InferenceData) -> Text:
    """Per layer and stage, one coloured cell per expert (load relative to balanced) and the hottest."""
    text = Text()
    if not p.stages:
        return Text("no expert load by stage recorded (not an MoE model, or the experts probe is off)", style="dim")
    ratios = {s: load_ratio(c) for s, (_, c) in p.stages.items()}
    scale = load_scale(np.concatenate([r.reshape(-1) for r in ratios.values()]))
    text.append("expert load by stage (whole run) · ", style="bold")
    for ratio, name in ((scale.lo, "0 starved"), (1.0, "1× balanced"), (scale.hi, f"{scale.hi:.3g}× hot")):
        text.append("██", style=hex_colour(ramp_rgb(scale.position(ratio), DIVERGING)))
        text.append(f" {name}  ", style="dim")
    text.append("\n")
    for stage, (layers, counts) in p.stages.items():
        for layer, ratio_row in zip(layers, ratios[stage]):
            text.append(f"{stage:<8}L{layer:<3}", style="dim")
            for r in ratio_row:
                text.append("█", style=hex_colour(ramp_rgb(scale.position(r), DIVERGING)))
            hot = int(np.nanargmax(ratio_row)) if np.isfinite(ratio_row).any() else -1
            text.append(f"  hottest E{hot} {ratio_row[hot]:.2f}×\n" if hot >= 0 else "\n")
    return text


def attention_text(p: InferenceData, width: int) -> Text:
    """The request's tokens up to the query, each on a background as bright as its attention weight."""
    from inspector.views.inference import printable_token  # loaded on the poller's thread first: cheap here

    a = p.attention
    text = Text()
    if a is None:
        if not p.choices:
            return Text("no attention map recorded for this request (maps are kept every N iterations)", style="dim")
        return Text("no map for this layer/head", style="dim")
    row = a.probs[-1]                     # the last query row: the token chosen
    scale = weight_scale(row)
    q = a.query_positions[-1]
    label = next((lab for s, lab in p.choices if s == p.query), "")
    text.append(f"layer {p.layer} head {p.head} · {label}\n", style="bold")
    text.append(f"what token {q} «{printable_token(a.query_labels[-1])}» attended to "
                f"(uniform would be {1 / max(len(row), 1):.3f}; max {float(row.max()):.3f} on token "
                f"{a.key_positions[int(row.argmax())]}) · bright = more weight, √ scale\n", style="dim")
    colours = ramp_rgb(scale.position(row), VIRIDIS)
    for pos, tok, w, rgb in zip(a.key_positions, a.key_labels, row, colours):
        fg = "black" if scale.position(w) > 0.6 else "white"
        style = f"{fg} on {hex_colour(rgb)}" + (" bold underline" if pos == q else "")
        if pos == p.prompt_len:
            text.append("│", style="bold yellow")
        text.append(printable_token(tok) or "·", style=style)
    return text


class InferenceScreen(InspectorScreen):
    """Requests, latency, throughput, experts by stage and a request's attention."""

    NAME = "inference"
    PAYLOAD = InferenceData
    BINDINGS = [Binding("n", "query(1)", "Query", key_display="n/p"), Binding("p", "query(-1)", "Prev", show=False),
                Binding("l", "layer(1)", "Layer", key_display="l/L"), Binding("L", "layer(-1)", "Layer-", show=False),
                Binding("h", "head(1)", "Head", key_display="h/H"), Binding("H", "head(-1)", "Head-", show=False)]

    def compose_body(self) -> ComposeResult:
        """Headline; run-wide panes on the left, the request viewer on the right."""
        yield Static("", id="inf-headline")
        # scrolls only when narrow (the panes stacked); never takes the focus (the request table has it)
        with VerticalScroll(id="inf-body", can_focus=False):
            with Horizontal(id="inf-columns"):
                with VerticalScroll(id="inf-left"):
                    yield Static("", id="inf-latency")
                    yield Static("", id="inf-series")
                    yield Static("", id="inf-experts")
                with VerticalScroll(id="inf-right"):
                    yield DataTable(id="inf-requests", cursor_type="row", zebra_stripes=True)
                    yield Static("", id="inf-tokens")
                    yield Static("", id="inf-attention")

    def on_resize(self) -> None:
        """Below `NARROW_COLS` columns the two panes are stacked (side by side each would clip its
        tables), and the screen scrolls as one."""
        self.set_class(self.size.width < NARROW_COLS, "narrow")

    def on_mount(self) -> None:
        """Request table columns."""
        table = self.query_one("#inf-requests", DataTable)
        for key in ("request", "e2e ms", "TTFT ms", "TPOT ms", "queue ms", "tokens", "finish"):
            table.add_column(key, key=key)
        table.focus()   # ↑/↓ pick a request at once

    def draw(self, payload: InferenceData, snap: Snapshot) -> str | None:
        """Every pane from the payload; a one-line message for a run with no inference records."""
        if payload.totals.iterations == 0 and payload.requests.empty:
            for pane in ("#inf-headline", "#inf-latency", "#inf-series", "#inf-experts", "#inf-tokens",
                         "#inf-attention"):
                self.query_one(pane, Static).update("")
            return NO_RUN
        half = max(20, (self.size.width if self.has_class("narrow") else self.size.width // 2) - 32)
        self.query_one("#inf-headline", Static).update(headline(payload))
        self.query_one("#inf-latency", Static).update(latency_table(payload))
        self.query_one("#inf-series", Static).update(series_lines(payload, half))
        self.query_one("#inf-experts", Static).update(expert_rows(payload))
        self._fill_requests(payload)
        tokens = Text()
        if payload.latencies_ms is not None and payload.request_id is not None:
            lat = payload.latencies_ms
            tokens.append(f"request #{payload.request_id}: ", style="bold")
            tokens.append(f"queued {num(payload.queue_ms, '{:,.1f}')} ms · first token {num(lat[0] if lat.size else None, '{:,.1f}')} ms"
                          f" · then {num(float(np.median(lat[1:])) if lat.size > 1 else None, '{:,.1f}')} ms median per token\n")
            tokens.append("per-token latency (after the first) ", style="dim")
            tokens.append(text_sparkline(binned(lat[1:], half), half, lo=0.0), style="#d97706")
        self.query_one("#inf-tokens", Static).update(tokens)
        self.query_one("#inf-attention", Static).update(attention_text(payload, half))
        return None

    def _fill_requests(self, p: InferenceData) -> None:
        """The request table. Only when its rows change is the cursor put on the payload's request:
        otherwise the cursor is the user's (a key may have moved it while this snapshot was built)."""
        table = self.query_one("#inf-requests", DataTable)
        keys = [str(int(r)) for r in p.requests["request_id"]]
        if [str(k.value) for k in table.rows] == keys:
            return
        table.clear()
        for r in p.requests.itertuples():
            table.add_row(f"#{int(r.request_id)}", num(r.e2e_request_latency_s * 1e3, "{:,.0f}"),
                          num(r.time_to_first_token_s * 1e3, "{:,.0f}"),
                          num(r.time_per_output_token_s * 1e3, "{:,.1f}"),
                          num(r.queue_time_s * 1e3, "{:,.0f}"), f"{int(r.prompt_tokens)}→{int(r.generation_tokens)}",
                          str(r.finished_reason), key=str(int(r.request_id)))
        if p.request_id is not None and str(p.request_id) in keys:
            index = keys.index(str(p.request_id))
            if table.cursor_row != index:
                table.move_cursor(row=index)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """Show the highlighted request (an event the cursor has already moved on from is stale: the
        table's own highlight after a redraw must not undo a key the user pressed meanwhile)."""
        if event.data_table.id == "inf-requests" and event.row_key.value is not None \
                and event.cursor_row == event.data_table.cursor_row:
            rid = int(event.row_key.value)
            if rid != self.inspector.request.request_id:
                self.inspector.update_request(request_id=rid, query=None)

    def _payload(self) -> InferenceData | None:
        snap = self.inspector.snapshot
        return snap.payload if snap is not None and isinstance(snap.payload, InferenceData) else None

    def action_query(self, delta: int) -> None:
        """Next/previous recorded attention map of the request."""
        p = self._payload()
        steps = [s for s, _ in p.choices] if p else []
        if steps and p.query in steps:
            self.inspector.update_request(query=steps[(steps.index(p.query) + delta) % len(steps)])

    def action_layer(self, delta: int) -> None:
        """Next/previous layer of the map."""
        p = self._payload()
        if p and p.layers and p.layer is not None:
            self.inspector.update_request(layer=p.layers[(p.layers.index(p.layer) + delta) % len(p.layers)])

    def action_head(self, delta: int) -> None:
        """Next/previous head of the map."""
        p = self._payload()
        if p and p.heads and p.head is not None:
            self.inspector.update_request(head=p.heads[(p.heads.index(p.head) + delta) % len(p.heads)])
