"""Overview: loss and eval loss with anomaly markers, learning rate, grad norm, step-time split, anomalies,
and the root cause of the selected loss spike (`overview_explain`)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, html

from inspector.dash_app.components import graph, message, panel
from inspector.dash_app.context import AppContext
from inspector.dash_app.pages import overview_explain
from inspector.dash_app.figures import ANOMALY_MARKER, PHASE_COLORS, TEMPLATE, add_threshold, empty_figure, line_figure
from inspector.views.anomalies import anomaly_list
from inspector.views.overview import eval_loss_name
from inspector.views.series import clip_threshold, grad_norm_series, scalar_names, scalar_series
from inspector.views.timing import EVAL, PHASES, step_breakdown

PATH = "/"
TITLE = "Overview"
GRAPHS = ["ov-loss", "ov-lr", "ov-gnorm", "ov-time"]


def layout() -> html.Div:
    """The page's panels (filled by the callback)."""
    return html.Div(className="page", children=[
        panel(graph("ov-loss", 300), wide=True),
        panel(graph("ov-lr")), panel(graph("ov-gnorm")),
        panel(graph("ov-time", 280), wide=True),
        panel(html.H3("anomalies"), html.Div(id="ov-anomalies", className="anomalies"), wide=True),
        overview_explain.layout(),
    ])


def loss_figure(run) -> go.Figure:
    """Loss (rank 0) and eval loss, with a marker at every anomaly's step."""
    loss = scalar_series(run, "loss", rank=0) if "loss" in scalar_names(run) else pd.DataFrame()
    series = {"loss": loss}
    ev = eval_loss_name(run)
    if ev:
        series[ev] = scalar_series(run, ev, rank=0)
    fig = line_figure(series, title="loss", ytitle="loss", empty="no loss recorded")
    for name, trace in zip(series, fig.data):
        if name != "loss":
            trace.update(mode="lines+markers", marker=dict(size=5))
    return add_anomaly_markers(fig, loss, anomaly_list(run, limit=500))


GRAD_KINDS = ("exploding_grad", "vanishing_grad", "nonfinite_grad")
"""Anomalies marked on the grad-norm chart as well as on the loss chart."""


def add_anomaly_markers(fig: go.Figure, line: pd.DataFrame, anomalies: pd.DataFrame) -> go.Figure:
    """An orange ▼ at each anomaly's step, sitting on `line` (a step/value frame; an anomaly at a
    non-finite step sits between its finite neighbours); the hover says what it is."""
    if not len(line) or not len(anomalies):
        return fig
    steps = anomalies["step"].to_numpy(np.float64)
    value = line["value"].to_numpy(np.float64)
    ok = np.isfinite(value)
    y = np.interp(steps, line["step"].to_numpy(np.float64)[ok], value[ok]) if ok.any() else np.zeros(len(steps))
    text = [f"step {s}: {k} {m}".strip() for s, k, m in zip(anomalies["step"], anomalies["kind"], anomalies["message"])]
    fig.add_trace(go.Scatter(x=steps, y=y, mode="markers", name="anomaly", text=text,
                             marker=ANOMALY_MARKER,
                             hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(showlegend=True)
    return fig


def time_figure(run) -> go.Figure:
    """Training step time split into forward / backward / optimizer / data / other, stacked; eval
    forwards (recorded apart, not in the step) as markers."""
    df = step_breakdown(run, rank=0)
    if df.empty:
        return empty_figure("step time: no timing recorded", height=280)
    fig = go.Figure(layout=dict(template=TEMPLATE, height=280, title="step time (rank 0)",
                                xaxis=dict(title="step"), yaxis=dict(title="ms")))
    for phase in PHASES:
        if phase in df and float(df[phase].abs().sum()) > 0:
            fig.add_trace(go.Scatter(x=df["step"].to_numpy(), y=df[phase].to_numpy(np.float64), name=phase,
                                     stackgroup="time", mode="lines", line=dict(width=0.5, color=PHASE_COLORS[phase]),
                                     hovertemplate=f"{phase} %{{y:.1f}} ms<extra></extra>"))
    ev = df[df[EVAL] > 0] if EVAL in df else df.iloc[:0]
    if len(ev):
        fig.add_trace(go.Scatter(x=ev["step"].to_numpy(), y=ev[EVAL].to_numpy(np.float64), name="eval (not in step)",
                                 mode="markers", marker=dict(symbol="diamond", size=7, color="#94a3b8"),
                                 hovertemplate="eval %{y:.1f} ms (apart from the training step)<extra></extra>"))
    return fig


def anomaly_table(run) -> html.Div:
    """The newest anomalies; each step is a button that moves the global step control there."""
    df = anomaly_list(run, limit=200)
    if df.empty:
        return message("no anomalies recorded")
    rows = [html.Tr([html.Td(html.Button(f"step {int(r.step)}", id={"type": "goto-step", "step": int(r.step),
                                                                    "row": int(r.Index)},
                                         n_clicks=0, className="step-link")),
                     html.Td(f"rank {int(r.rank)}"), html.Td(r.kind), html.Td(r.module or "—"), html.Td(r.message)])
            for r in df.itertuples()]
    head = html.Tr([html.Th(c) for c in ("step", "rank", "kind", "module", "message")])
    return html.Table([html.Thead(head), html.Tbody(rows)])


def _fallback(msg: str):
    return (*[empty_figure(msg) for _ in GRAPHS], message(msg))


def register(app, context: AppContext) -> None:
    """The page's callback: every panel from the run state (redrawn only when new records arrive)."""
    @app.callback(*[Output(g, "figure") for g in GRAPHS], Output("ov-anomalies", "children"),
                  Input("run-state", "data"))
    @context.with_run(_fallback)
    def draw(run):
        names = scalar_names(run)
        lr = line_figure({"lr": scalar_series(run, "lr", rank=0)} if "lr" in names else {},
                         title="learning rate", empty="no learning rate recorded")
        return loss_figure(run), lr, grad_norm_figure(run), time_figure(run), anomaly_table(run)

    overview_explain.register(app, context)


def grad_norm_figure(run) -> go.Figure:
    """The global gradient norm before clipping, the norm applied after it, and the clip threshold
    (inferred from the applied norm on clipped steps)."""
    series = grad_norm_series(run, rank=0)
    fig = line_figure(series, title="global grad norm", empty="no gradient norm recorded")
    if series:
        anomalies = anomaly_list(run, limit=500)
        add_anomaly_markers(fig, next(iter(series.values())), anomalies[anomalies["kind"].isin(GRAD_KINDS)])
    limit = clip_threshold(run, rank=0)
    return add_threshold(fig, limit, f"clip threshold ≈ {limit:.3g} (inferred)" if limit is not None else "")
