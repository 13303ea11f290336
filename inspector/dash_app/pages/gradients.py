"""Gradients: norm and variance as group × step heatmaps, update/weight ratio lines, one group in detail."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from dash import Input, Output, dcc, html
from plotly.subplots import make_subplots

from inspector.dash_app.components import graph, panel
from inspector.dash_app.context import AppContext
from inspector.dash_app.figures import TEMPLATE, add_nonfinite_markers, empty_figure, heatmap_figure, line_figure
from inspector.views.gradients import grad_groups, grad_heatmap, grad_lines, group_detail

PATH = "/gradients"
TITLE = "Gradients"
NO_GRADS = "no per-group gradient statistics recorded in this run (gradients probe off?)"
DETAIL = [("norm", "norm"), ("var", "variance"), ("max_abs", "max |g|"), ("update_ratio", "update/weight")]


def layout() -> html.Div:
    """Two heatmaps, ratio lines, and a group picker with its detail."""
    return html.Div(className="page", children=[
        panel(graph("grad-norm", 360)), panel(graph("grad-var", 360)),
        panel(graph("grad-ratio", 320), wide=True),
        panel(html.Div(className="controls", children=[
            html.Span("parameter group"),
            dcc.Dropdown(id="grad-group", options=[], value=None, clearable=False)]),
            graph("grad-detail", 420), wide=True),
    ])


def _height(rows: int) -> int:
    return max(360, min(900, 16 * rows + 120))


def heat(run, stat: str, title: str):
    """Statistic `stat` of every group over steps (log colour scale)."""
    hm = grad_heatmap(run, stat)
    if hm.empty:
        return empty_figure(NO_GRADS, height=360)
    return heatmap_figure(hm.z, x=hm.steps, y=hm.rows, title=title, ztitle=stat, log=True, nonfinite=hm.nonfinite,
                          height=_height(len(hm.rows)), hover="%{y}<br>step %{x}<br>" + stat + " %{z:.4g}")


def detail_figure(run, name: str | None) -> go.Figure:
    """Norm, variance, max |g| and update ratio of one group, one small chart each."""
    if not name:
        return empty_figure(NO_GRADS, height=420)
    df = group_detail(run, name)
    if df.empty:
        return empty_figure(f"no statistics for {name}", height=420)
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t in DETAIL], vertical_spacing=0.16,
                        horizontal_spacing=0.08)
    for i, (col, label) in enumerate(DETAIL):
        y = df[col].to_numpy(np.float64)
        fig.add_trace(go.Scatter(x=df["step"], y=np.where(np.isfinite(y), y, np.nan), mode="lines", name=label,
                                 showlegend=False, hovertemplate=f"step %{{x}}<br>{label} %{{y:.4g}}<extra></extra>"),
                      row=i // 2 + 1, col=i % 2 + 1)
        add_nonfinite_markers(fig, {label: (df["step"].to_numpy(), y)}, log_y=col == "update_ratio",
                              row=i // 2 + 1, col=i % 2 + 1)
    fig.update_yaxes(type="log", row=2, col=2)         # ratios span decades; a constant one stays readable
    fig.update_layout(template=TEMPLATE, height=420, title=f"{name}", margin=dict(t=60))
    return fig


def register(app, context: AppContext) -> None:
    """Heatmaps and lines follow the run; the detail follows the group picker."""
    @app.callback(Output("grad-norm", "figure"), Output("grad-var", "figure"), Output("grad-ratio", "figure"),
                  Output("grad-group", "options"), Output("grad-group", "value"),
                  Input("run-state", "data"), Input("grad-group", "value"))
    @context.with_run(lambda msg: (empty_figure(msg), empty_figure(msg), empty_figure(msg), [], None))
    def draw(run, group):
        groups = grad_groups(run)
        lines = grad_lines(run, "update_ratio")
        ratio = line_figure(lines, title="update / weight ratio per group", ytitle="|Δw| / |w|", log_y=True,
                            height=320, empty=NO_GRADS)
        value = group if group in groups else (groups[0] if groups else None)
        return (heat(run, "norm", "gradient norm (group × step)"), heat(run, "var", "gradient variance (group × step)"),
                ratio, [{"label": g, "value": g} for g in groups], value)

    @app.callback(Output("grad-detail", "figure"), Input("run-state", "data"), Input("grad-group", "value"))
    @context.with_run(lambda msg: empty_figure(msg, height=420))
    def draw_detail(run, group):
        return detail_figure(run, group)
