"""Activations: one module's histogram over time (bins × step) with the share of each step's values it
holds (in range, below, above, NaN/Inf) drawn under it, its histogram at the selected step (own bins),
and the dead-unit fraction of every module over time with the layers flagged dead."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from dash import Input, Output, dcc, html

from inspector.dash_app.components import graph, panel
from inspector.dash_app.context import AppContext, selected_step
from inspector.dash_app.figures import ANOMALY_MARKER, TEMPLATE, empty_figure, heatmap_figure, line_figure
from inspector.views.activations import (
    HistogramOverTime, activation_modules, activation_stat_lines, dead_layers, histogram_at, histogram_over_time,
)
from inspector.views.anomalies import anomaly_list

PATH = "/activations"
TITLE = "Activations"
NO_HIST = "no activation histograms recorded in this run (activations probe off?)"
SHARES = (("in range", "inside", "#2563eb"), ("below range", "below", "#d97706"),
          ("above range", "above", "#7c3aed"), ("NaN/Inf", "nonfinite", "#dc2626"))
"""The share rows of `HistogramOverTime`: legend name, attribute, colour."""


def layout() -> html.Div:
    """Module picker, histogram over time with its in-range share, histogram at the step, dead fractions."""
    return html.Div(className="page", children=[
        panel(html.Div(className="controls", children=[
            html.Span("module"), dcc.Dropdown(id="act-module", options=[], value=None, clearable=False)]),
            graph("act-hist", 380), graph("act-range", 200), wide=True),
        panel(graph("act-step", 300)), panel(graph("act-dead", 300)),
    ])


def _share(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.1%}" if value < 0.999 or value == 1 else f"{value:.2%}"


def _held(h: HistogramOverTime, col: int) -> str:
    """What the histogram at column `col` holds and leaves out, in words."""
    words = f"{_share(h.inside[col])} of values in range"
    left = [f"{name} {_share(getattr(h, attr)[col])}" for name, attr, _ in SHARES[1:] if getattr(h, attr)[col] > 0]
    return words + (" (" + ", ".join(left) + ")" if left else "")


def hist_figure(run, module: str | None) -> go.Figure:
    """Fraction of outputs per bin (rows) and step (columns), log colour; hover and title give the
    in-range share of each step."""
    if not module:
        return empty_figure(NO_HIST, height=380)
    h = histogram_over_time(run, module)
    if h.empty:
        return empty_figure(f"no histogram for {module}", height=380)
    last = len(h.steps) - 1
    fig = heatmap_figure(h.z, x=h.steps, y=np.round(h.centers, 4),
                         title=f"{module}: output histogram over steps; step {h.steps[last]:,}: {_held(h, last)}",
                         ytitle="value", ztitle="fraction", log=True, height=380)
    bins = h.z.shape[0]
    per_step = np.stack([h.inside, h.below + h.above, h.nonfinite])       # [3, steps]
    custom = np.dstack([h.z, *(np.broadcast_to(r, (bins, len(r))) for r in per_step)])
    fig.update_traces(customdata=custom, hovertemplate=(
        "value %{y}<br>step %{x}<br>fraction %{customdata[0]:.4g}<br>in range at this step %{customdata[1]:.2%}"
        "<br>outside the range %{customdata[2]:.2%}, NaN/Inf %{customdata[3]:.2%}<extra></extra>"))
    fig.update_yaxes(autorange=True)
    return add_module_anomalies(fig, h, anomaly_list(run, limit=500))


def add_module_anomalies(fig: go.Figure, h: HistogramOverTime, anomalies) -> go.Figure:
    """An orange ▼ over the histogram at each step an anomaly names this module (or a module inside it),
    on the highest occupied bin of the nearest recorded step; the hover gives the message."""
    mine = anomalies[[m == h.module or str(m).startswith(h.module + ".") for m in anomalies["module"]]]
    if mine.empty:
        return fig
    cols = np.clip(np.searchsorted(h.steps, mine["step"].to_numpy(np.int64), side="right") - 1, 0, len(h.steps) - 1)
    occupied = np.nan_to_num(h.z, nan=0.0) > 0                          # [bins, steps]
    top = np.where(occupied.any(axis=0), occupied.shape[0] - 1 - np.argmax(occupied[::-1], axis=0),
                   occupied.shape[0] - 1)
    fig.add_trace(go.Scatter(x=mine["step"].to_numpy(), y=np.round(h.centers, 4)[top[cols]], mode="markers",
                             name="anomaly", text=[f"step {s}: {k} {m}" for s, k, m in
                                                   zip(mine["step"], mine["kind"], mine["message"])],
                             marker=ANOMALY_MARKER,
                             hovertemplate="%{text}<extra></extra>"))
    return fig


def range_figure(run, module: str | None) -> go.Figure:
    """Per step: the share of the module's values inside its histogram's range, below, above, NaN/Inf."""
    h = histogram_over_time(run, module) if module else None
    if h is None or h.empty:
        return empty_figure("no histogram: no in-range share to show", height=200)
    fig = go.Figure(layout=dict(template=TEMPLATE, height=200, margin=dict(t=36),
                                title="share of the step's values the histogram holds",
                                xaxis=dict(title="step"),
                                yaxis=dict(title="share", tickformat=".0%", rangemode="tozero")))
    for name, attr, colour in SHARES:
        y = getattr(h, attr)
        if attr != "inside" and not np.nanmax(y, initial=0.0) > 0:
            continue  # nothing left out that way: no line to read
        fig.add_trace(go.Scatter(x=h.steps, y=y, name=name, mode="lines+markers", marker=dict(size=4, color=colour),
                                 line=dict(width=1.5, color=colour),
                                 hovertemplate=f"{name}<br>step %{{x}}<br>%{{y:.2%}}<extra></extra>"))
    return fig


def step_hist_figure(run, module: str | None, step: int) -> go.Figure:
    """The module's histogram, with its own recorded bins, at the recorded step nearest before the selected one."""
    if not module:
        return empty_figure(NO_HIST, height=300)
    h = histogram_at(run, module, step)
    if h is None:
        return empty_figure(f"no histogram for {module}", height=300)
    total = max(h.total, 1)
    outside = (("below", h.below), ("above", h.above), ("NaN/Inf", h.nonfinite))
    left = [f"{name} {_share(n / total)}" for name, n in outside if n > 0]
    title = f"{module} at step {h.step:,}: {_share(h.inside)} in range" + (" · " + ", ".join(left) if left else "")
    if not np.isfinite(h.edges).all():
        return empty_figure(f"{title}: no finite value to draw", height=300)
    fig = go.Figure(go.Bar(x=(h.edges[:-1] + h.edges[1:]) / 2, y=h.counts / total, marker_color="#2563eb",
                           width=float(h.edges[1] - h.edges[0]),
                           hovertemplate="value %{x:.4g}<br>%{y:.3%} of the step's values<extra></extra>"),
                    layout=dict(template=TEMPLATE, height=300, title=title,
                                xaxis=dict(title="value"), yaxis=dict(title="fraction", tickformat=".1%"), bargap=0))
    return fig


def dead_figure(run) -> go.Figure:
    """Dead-unit fraction per module; the title names the modules flagged dead at their last sample."""
    dead = dead_layers(run)
    title = "dead-unit fraction per module"
    if dead:
        title += "; dead now: " + ", ".join(f"{m} (since step {s:,})" for m, s in dead.items())
    return line_figure(activation_stat_lines(run, "dead_frac"), title=title, ytitle="fraction", height=300,
                       empty="no activation statistics recorded")


def register(app, context: AppContext) -> None:
    """Histogram, shares and dead fraction follow the run; the per-step histogram also follows the step control."""
    @app.callback(Output("act-hist", "figure"), Output("act-range", "figure"), Output("act-dead", "figure"),
                  Output("act-module", "options"), Output("act-module", "value"),
                  Input("run-state", "data"), Input("act-module", "value"))
    @context.with_run(lambda msg: (empty_figure(msg, height=380), empty_figure(msg, height=200),
                                   empty_figure(msg, height=300), [], None))
    def draw(run, module):
        modules = activation_modules(run)
        value = module if module in modules else (modules[0] if modules else None)
        return (hist_figure(run, value), range_figure(run, value), dead_figure(run),
                [{"label": m, "value": m} for m in modules], value)

    @app.callback(Output("act-step", "figure"), Input("run-state", "data"), Input("act-module", "value"),
                  Input("step", "data"))
    @context.with_run(lambda msg: empty_figure(msg, height=300))
    def draw_step(run, module, step):
        return step_hist_figure(run, module, selected_step(step))
