"""System: GPU utilisation, memory, power, temperature per rank and device over time; host CPU and RSS;
the ms each rank waited for a CPU another process held;
a per-rank table with stragglers flagged; above it, while some rank is stuck, the hang verdict (which
ranks, where, who is missing from which collective, and the stuck ranks' frames)."""
from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
from dash import Input, Output, dash_table, html

from inspector.dash_app.components import graph, panel
from inspector.dash_app.context import AppContext
from inspector.dash_app.figures import empty_figure, line_figure
from inspector.views.hang import HangVerdict, hang_verdict, rank_list, stuck_table
from inspector.views.ranks import by_node, rank_table
from inspector.views.system import GPU_METRICS, HOST_METRICS, cpu_wait_series, has_gpu_samples, system_series

# DataTable is deprecated in favour of dash-ag-grid (whose 2-5 MB of script every page would load
# eagerly); it still ships with Dash and its script is already on every page.
warnings.filterwarnings("ignore", message=r"\s*The dash_table.DataTable will be removed", category=DeprecationWarning)

PATH = "/system"
TITLE = "System"
METRICS = {**GPU_METRICS, **HOST_METRICS}
GRAPHS = [f"sys-{m}" for m in METRICS] + ["sys-cpu_wait"]
TABLE_COLUMNS = [("rank", "rank", ""), ("node", "node", None), ("straggler_score", "holds step up", ".0f ms"),
                 ("step", "step", ",.0f"), ("step_ms", "step ms", ".1f"), ("compute_ms", "compute ms", ".1f"),
                 ("cpu_wait_ms", "CPU wait ms", ".1f"),
                 ("tokens_per_s", "tok/s", ",.0f"), ("loss", "loss", ".4f"), ("grad_norm", "grad norm", ".3g"),
                 ("gpu_util", "GPU %", ".0f"), ("gpu_mem_used", "GPU mem GiB", ".2f"),
                 ("power_w", "W", ".0f"), ("temp_c", "°C", ".0f")]
"""(column, header, number format: a d3 specifier, then an optional unit; None: text)."""


def layout() -> html.Div:
    """The hang panel (empty while nothing is stuck), the rank table, then one chart per metric."""
    return html.Div(className="page", children=[
        html.Div(id="sys-hang", className="panel wide", style={"display": "none"}),
        panel(html.H3("ranks"), html.Div(id="sys-ranks", children=[html.P(className="notice", id="sys-ranks-count"),
                                                                    rank_data_table()]), wide=True),
        *[panel(graph(g, 240)) for g in GRAPHS],
    ])


PAGE_ROWS = 64
"""Rank table rows per page (every rank is in the table; the worst nodes' on the first page)."""


def _column(col: str, label: str, fmt: str | None) -> dict[str, Any]:
    """A DataTable column: numbers stay numbers (sorting and filtering by value), drawn with `fmt`;
    a missing value reads "N/A"."""
    if fmt is None:
        return {"id": col, "name": label, "type": "text"}
    spec, _, unit = fmt.partition(" ")
    locale = {"symbol": ["", f" {unit}"]} if unit else {}
    return {"id": col, "name": label, "type": "numeric",
            "format": {"specifier": ("$" if unit else "") + spec, "nully": "N/A", "locale": locale}}


COLUMNS = [_column(*c) for c in TABLE_COLUMNS] + [{"id": "status", "name": "status", "type": "text"},
                                                  {"id": "flag", "name": "", "type": "text"}]


def _number(value: Any, col: str) -> float | int | None:
    """A cell's value for the table: None for a missing or non-finite number; GPU memory in GiB."""
    if value is None or isinstance(value, str):
        return None
    value = float(value)
    if not np.isfinite(value):
        return None
    if col == "gpu_mem_used":
        return value / float(1 << 30)
    return int(value) if col in ("rank", "step") else value


def rank_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The table's rows, in `df`'s order: one dict per rank (numbers as numbers, `flag` "straggler" or "")."""
    rows = []
    for r in df.to_dict("records"):
        row: dict[str, Any] = {c: (r[c] if fmt is None else _number(r[c], c)) for c, _, fmt in TABLE_COLUMNS}
        row["status"] = r["status"]
        row["flag"] = "straggler" if r["straggler"] else ""
        rows.append(row)
    return rows


FLAGGED_STYLE = {"if": {"filter_query": '{flag} = "straggler"'}, "backgroundColor": "#fee2e2", "color": "#991b1b",
                 "fontWeight": "bold"}


def rank_data_table() -> dash_table.DataTable:
    """The rank table, empty: the page's callback fills its rows, so the user's sorting, filter and
    page stay as the run goes on. One table component, not a component per cell: 64 rows of cell
    components took the browser 1.5 s to build."""
    return dash_table.DataTable(
        id="sys-rank-table", data=[], columns=COLUMNS, page_size=PAGE_ROWS, page_action="native",
        sort_action="native", filter_action="native", style_as_list_view=True,
        style_data_conditional=[FLAGGED_STYLE],
        style_cell={"fontFamily": "inherit", "fontSize": "13px", "padding": "3px 8px"},
        style_cell_conditional=[{"if": {"column_type": "text"}, "textAlign": "left"}],
        style_header={"fontWeight": "bold"})


def ranks_table(run) -> tuple[list[dict[str, Any]], str]:
    """(rows, note) of the rank table: every rank, grouped by node (the node with the highest
    straggler score first) and sorted by the score within it; the note counts ranks, nodes and
    flagged stragglers."""
    df: pd.DataFrame = by_node(rank_table(run))
    if df.empty:
        return [], "no ranks have written anything yet"
    flagged = int(df["straggler"].sum())
    nodes = df["node"].nunique()
    note = (f"{len(df):,} rank{'s' * (len(df) != 1)} on {nodes:,} node{'s' * (nodes != 1)}, "
            "the node holding the step up most first"
            + (f"; {flagged} flagged" if flagged else "; none flagged")
            + (f"; {PAGE_ROWS} a page" if len(df) > PAGE_ROWS else ""))
    return rank_rows(df), note


HIDDEN = {"display": "none"}
HANG_STYLE = {"border": "2px solid #dc2626", "background": "#fef2f2", "color": "#7f1d1d"}
HANG_COLUMNS = ("rank", "state", "where", "step", "phase", "module", "collective", "stalled", "host:pid")


def _frames(v: HangVerdict) -> list:
    out = []
    for s in v.named:
        if not s.frames and s.innermost is None:
            continue
        when = f", written {time.strftime('%H:%M:%S', time.gmtime(s.dump_time))} UTC" if s.dump_time else ""
        lines = [f"rank {s.rank} main thread ({s.dump}{when}), most recent call first:"]
        lines += [f"  {f.where} in {f.function}    {f.file}" for f in s.frames]
        if s.innermost is not None:
            f = s.innermost
            lines.append(f"  innermost: {f.where} in {f.function}    {f.file}")
        out.append(html.Pre("\n".join(lines), className="hang-frames", **{"data-rank": str(s.rank)}))
    return out


def hang_panel(v: HangVerdict | None) -> tuple[list, dict]:
    """(children, style) of the hang panel: hidden when no rank is stuck."""
    if v is None:
        return [], HIDDEN
    head = html.Tr([html.Th(c) for c in HANG_COLUMNS])
    rows = [html.Tr([html.Td(x) for x in (rank_list(r.ranks, limit=6), r.state, r.where, str(r.step), r.phase,
                                           r.module, r.collective, r.stalled_text, r.host)],
                    className="hang-named" if r.named else "", style={"fontWeight": "bold"} if r.named else {})
            for r in stuck_table(v)]
    notes = [html.Div(f"desynchronised: {d.line()}", className="hang-desync") for d in v.desyncs]
    if v.silent:
        notes.append(html.Div(f"no heartbeat at all from rank(s) {rank_list(v.silent)}"))
    if v.processes_gone:
        notes.append(html.Div(f"the processes are gone: last heartbeat "
                              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(v.last_heartbeat))} UTC; "
                              "this is their last state"))
    notes += [html.Div(p, className="hang-problem") for p in v.problems[:5]]
    children = [html.H3([html.Span(" HANG ", style={"background": "#dc2626", "color": "white", "padding": "0 6px"}),
                         " ", html.Span(v.headline, id="hang-headline")]),
                *notes,
                html.Div(f"stuck ranks: {len(v.stuck)} of {v.world_size}", className="hang-count"),
                html.Table([html.Thead(head), html.Tbody(rows)], className="rank-table hang-table"),
                *_frames(v)]
    return children, HANG_STYLE


def system_figures(run) -> list:
    """The page's charts (`GRAPHS` order): each GPU and host metric, then the CPU waits."""
    gpu = has_gpu_samples(run)
    figs = []
    for metric, label in METRICS.items():
        if metric in GPU_METRICS and not gpu:
            figs.append(empty_figure(f"{label}: N/A (no GPU samples: no NVML or no GPU)", height=240))
            continue
        figs.append(line_figure(system_series(run, metric), title=label, xcol="step", xtitle="step",
                                height=240, empty="no samples (system probe off?)"))
    figs.append(line_figure(cpu_wait_series(run), title="CPU wait per step (ms): runnable, another process on its CPU",
                            ytitle="ms", height=240,
                            empty="not recorded (the timing probe reads it on CPU runs on Linux)"))
    return figs


def register(app, context: AppContext) -> None:
    """Every panel follows the run; the rank table and the charts are separate callbacks, so each is
    drawn as soon as it is ready (the table is what a wide job's user looks at first)."""
    # The hang panel follows the clock too: a hung job writes no records, only heartbeats.
    @app.callback(Output("sys-hang", "children"), Output("sys-hang", "style"), Input("run-state", "data"),
                  Input("live-tick", "n_intervals"))
    @context.with_run(lambda msg: ([], HIDDEN))
    def draw_hang(run, _tick):
        return hang_panel(hang_verdict(run))

    @app.callback(Output("sys-rank-table", "data"), Output("sys-ranks-count", "children"), Input("run-state", "data"))
    @context.with_run(lambda msg: ([], msg))
    def draw_ranks(run):
        return ranks_table(run)

    @app.callback(*[Output(g, "figure") for g in GRAPHS], Input("run-state", "data"))
    @context.with_run(lambda msg: tuple(empty_figure(msg, height=240) for _ in GRAPHS))
    def draw_charts(run):
        return tuple(system_figures(run))
