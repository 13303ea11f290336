"""Activations: one module's histogram over time (bins × step), its histogram at the selected step, and
the dead-unit fraction of every module over time."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from dash import Input, Output, dcc, html

from inspector.dash_app.components import graph, panel
from inspector.dash_app.context import AppContext, selected_step
from inspector.dash_app.figures import TEMPLATE, empty_figure, heatmap_figure, line_figure
from inspector.views.activations import activation_modules, activation_stat_lines, histogram_over_time
from inspector.views.steps import nearest_at_or_before

PATH = "/activations"
TITLE = "Activations"
NO_HIST = "no activation histograms recorded in this run (activations probe off?)"


def layout() -> html.Div:
    """Module picker, histogram over time, histogram at the step, dead fraction lines."""
    return html.Div(className="page", children=[
        panel(html.Div(className="controls", children=[
            html.Span("module"), dcc.Dropdown(id="act-module", options=[], value=None, clearable=False)]),
            graph("act-hist", 380), wide=True),
        panel(graph("act-step", 300)), panel(graph("act-dead", 300)),
    ])


def hist_figure(run, module: str | None) -> go.Figure:
    """Fraction of outputs per bin (rows) and step (columns), log colour."""
    if not module:
        return empty_figure(NO_HIST, height=380)
    h = histogram_over_time(run, module)
    if h.empty:
        return empty_figure(f"no histogram for {module}", height=380)
    fig = heatmap_figure(h.z, x=h.steps, y=np.round(h.centers, 4), title=f"{module}: output histogram over steps",
                         ytitle="value", ztitle="fraction", log=True, height=380,
                         hover="value %{y}<br>step %{x}<br>fraction %{z:.4g}")
    fig.update_yaxes(autorange=True)
    return fig


def step_hist_figure(run, module: str | None, step: int) -> go.Figure:
    """The module's histogram at the recorded step nearest before the selected one."""
    if not module:
        return empty_figure(NO_HIST, height=300)
    h = histogram_over_time(run, module, max_steps=1 << 30)
    if h.empty:
        return empty_figure(f"no histogram for {module}", height=300)
    at = nearest_at_or_before(h.steps.tolist(), step)
    col = int(np.searchsorted(h.steps, at))
    fig = go.Figure(go.Bar(x=h.centers, y=h.z[:, col], marker_color="#2563eb",
                           width=float(h.edges[1] - h.edges[0]), hovertemplate="value %{x:.3g}<br>%{y:.3%}<extra></extra>"),
                    layout=dict(template=TEMPLATE, height=300, title=f"{module} at step {at:,}",
                                xaxis=dict(title="value"), yaxis=dict(title="fraction", tickformat=".1%"), bargap=0))
    return fig


def register(app, context: AppContext) -> None:
    """Histogram and dead fraction follow the run; the per-step histogram also follows the step control."""
    @app.callback(Output("act-hist", "figure"), Output("act-dead", "figure"), Output("act-module", "options"),
                  Output("act-module", "value"), Input("run-state", "data"), Input("act-module", "value"))
    @context.with_run(lambda msg: (empty_figure(msg, height=380), empty_figure(msg, height=300), [], None))
    def draw(run, module):
        modules = activation_modules(run)
        value = module if module in modules else (modules[0] if modules else None)
        dead = line_figure(activation_stat_lines(run, "dead_frac"), title="dead-unit fraction per module",
                           ytitle="fraction", height=300, empty="no activation statistics recorded")
        return hist_figure(run, value), dead, [{"label": m, "value": m} for m in modules], value

    @app.callback(Output("act-step", "figure"), Input("run-state", "data"), Input("act-module", "value"),
                  Input("step", "data"))
    @context.with_run(lambda msg: empty_figure(msg, height=300))
    def draw_step(run, module, step):
        return step_hist_figure(run, module, selected_step(step))
