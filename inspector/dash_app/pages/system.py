"""System: GPU utilisation, memory, power, temperature per rank and device over time; host CPU and RSS;
a per-rank table with stragglers flagged."""
from __future__ import annotations

import numpy as np
import pandas as pd
from dash import Input, Output, html

from inspector.dash_app.components import graph, message, panel
from inspector.dash_app.context import AppContext
from inspector.dash_app.figures import empty_figure, line_figure
from inspector.views.ranks import rank_table
from inspector.views.system import GPU_METRICS, HOST_METRICS, has_gpu_samples, system_series

PATH = "/system"
TITLE = "System"
METRICS = {**GPU_METRICS, **HOST_METRICS}
GRAPHS = [f"sys-{m}" for m in METRICS]
TABLE_COLUMNS = [("rank", "rank", "{:.0f}"), ("step", "step", "{:,.0f}"), ("step_ms", "step ms", "{:.1f}"),
                 ("compute_ms", "compute ms", "{:.1f}"), ("tokens_per_s", "tok/s", "{:,.0f}"), ("loss", "loss", "{:.4f}"), ("grad_norm", "grad norm", "{:.3g}"),
                 ("gpu_util", "GPU %", "{:.0f}"), ("gpu_mem_used", "GPU mem GiB", "{:.2f}"),
                 ("power_w", "W", "{:.0f}"), ("temp_c", "°C", "{:.0f}")]


def layout() -> html.Div:
    """The rank table on top, then one chart per metric."""
    return html.Div(className="page", children=[
        panel(html.H3("ranks"), html.Div(id="sys-ranks"), wide=True),
        *[panel(graph(g, 240)) for g in GRAPHS],
    ])


def _cell(value, fmt: str, col: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "N/A"
    if col == "gpu_mem_used":
        value = value / float(1 << 30)
    return fmt.format(value)


def ranks_table(run) -> html.Table | html.Div:
    """One row per rank; stragglers (step time well above the median) in red."""
    df: pd.DataFrame = rank_table(run)
    if df.empty:
        return message("no ranks have written anything yet")
    head = html.Tr([html.Th(label) for _, label, _ in TABLE_COLUMNS] + [html.Th("status"), html.Th("")])
    rows = []
    for r in df.to_dict("records"):
        cells = [html.Td(_cell(r[c], f, c), className="num") for c, _, f in TABLE_COLUMNS]
        cells += [html.Td(r["status"]), html.Td("straggler" if r["straggler"] else "")]
        rows.append(html.Tr(cells, className="straggler" if r["straggler"] else ""))
    return html.Table([html.Thead(head), html.Tbody(rows)], className="rank-table")


def register(app, context: AppContext) -> None:
    """Every panel follows the run."""
    def fallback(msg):
        return (message(msg), *[empty_figure(msg, height=240) for _ in GRAPHS])

    @app.callback(Output("sys-ranks", "children"), *[Output(g, "figure") for g in GRAPHS], Input("run-state", "data"))
    @context.with_run(fallback)
    def draw(run):
        gpu = has_gpu_samples(run)
        figs = []
        for metric, label in METRICS.items():
            if metric in GPU_METRICS and not gpu:
                figs.append(empty_figure(f"{label}: N/A (no GPU samples: no NVML or no GPU)", height=240))
                continue
            figs.append(line_figure(system_series(run, metric), title=label, xcol="step", xtitle="step",
                                    height=240, empty="no samples (system probe off?)"))
        return (ranks_table(run), *figs)
