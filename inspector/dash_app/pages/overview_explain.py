"""The Overview's "explain" panel: the root cause of the loss spike at the selected step (or the last
one before it), from `views.explain`: a headline, each top signal's robust z against its own
baseline over the steps before the spike, the ranked table, the batch and whether it can be replayed."""
from __future__ import annotations

import plotly.graph_objects as go
from dash import Input, Output, html

from inspector.dash_app.components import graph, message, panel
from inspector.dash_app.context import AppContext, selected_step
from inspector.dash_app.figures import TEMPLATE, empty_figure
from inspector.views.explain import (DEPART_Z, Explanation, explain, factor_text, headline, lead_series, rank_note,
                                     spike_at_or_before, spike_steps, z_text)

TOP = 6
"""Leads drawn and listed."""
COLOURS = ["#dc2626", "#ea580c", "#ca8a04", "#2563eb", "#7c3aed", "#0891b2"]


def layout() -> html.Div:
    """The panel (filled by `register`'s callback)."""
    return panel(html.H3("explain: what moved first before the loss spike"), html.Div(id="ov-explain"),
                 graph("ov-explain-fig", 300), wide=True)


def explain_figure(run, e: Explanation) -> go.Figure:
    """The top leads' robust z against their own baselines over the 20 steps up to the spike, the
    departure bar (±DEPART_Z) dashed and the spike step marked: the cause rises first."""
    series = lead_series(run, e, top=TOP)
    if not series:
        return empty_figure("no recorded signal left its baseline before this step", height=300)
    fig = go.Figure(layout=dict(template=TEMPLATE, height=320, title=f"signals before the spike at step {e.step:,} "
                                "(robust z against each one's own baseline)",
                                xaxis=dict(title="step"), yaxis=dict(title="z (baseline deviations)"),
                                legend=dict(orientation="h", y=-0.25), meta={"leads": [l.label for l, _, _ in series]}))
    for i, (lead, steps, z) in enumerate(series):
        fig.add_trace(go.Scatter(x=steps, y=z, mode="lines+markers", name=f"{i + 1}. {lead.label}",
                                 line=dict(color=COLOURS[i % len(COLOURS)], width=2.5 if i == 0 else 1.5),
                                 marker=dict(size=5),
                                 hovertemplate=f"{lead.label}<br>step %{{x}}<br>z %{{y:.1f}}<extra></extra>"))
    for bar in (DEPART_Z, -DEPART_Z):
        fig.add_hline(y=bar, line=dict(color="#94a3b8", width=1, dash="dash"))
    fig.add_vline(x=e.step, line=dict(color="#dc2626", width=1, dash="dot"), annotation_text="spike")
    return fig


def explain_children(e: Explanation, note: str) -> list:
    """Headline, ranked table of the top leads, earlier conditions, batch and replay lines."""
    out: list = [html.Div(note, className="notice")] if note else []
    out.append(html.P(headline(e), className="explain-headline", style={"fontWeight": "600", "color": "#b91c1c",
                                                                        "margin": "4px 0"}))
    if e.spike or e.ranks > 1:
        where = f"rank {e.rank}{rank_note(e)}" if e.ranks > 1 else ""
        out.append(html.P(" · ".join(x for x in (where, e.spike) if x), id="ov-explain-spike",
                          style={"margin": "2px 0 8px", "fontSize": "13px"}))
    if e.leads:
        head = html.Tr([html.Th(c) for c in ("#", "signal", "where", "left at", "before spike", "× baseline", "z")])
        rows = [html.Tr([html.Td(str(i + 1)), html.Td(l.signal), html.Td(l.subject or "—"), html.Td(f"{l.left_at:,}"),
                         html.Td(str(l.steps_before)), html.Td(factor_text(l.factor)),
                         html.Td(z_text(l.z))])
                for i, l in enumerate(e.leads[:TOP])]
        out.append(html.Table([html.Thead(head), html.Tbody(rows)], id="ov-explain-table", className="rank-table"))
        if len(e.leads) > TOP:
            out.append(html.P(f"… {len(e.leads) - TOP} more signals left their baseline "
                              f"(inspector explain RUN --step {e.step} lists them)", style={"fontSize": "13px"}))
    for l in e.earlier[:TOP]:
        out.append(html.P(f"already off before step {e.window[0]:,}: {l.label} since step {l.left_at:,} "
                          f"({factor_text(l.factor)} its baseline)", style={"color": "#a16207", "fontSize": "13px"}))
    batch = (f"batch: {len(e.batch)} forward(s), {e.batch_shapes}, fingerprint "
             + ", ".join(f"{v & 0xFFFF_FFFF_FFFF_FFFF:#018x}" for v in e.batch)) if e.batch else "batch: not recorded"
    replay = ("replay: generator states kept (inspector.restore_rng(run, step))" if e.rng_kept
              else "replay: no generator state kept for this step")
    small = {"margin": "2px 0", "fontSize": "13px", "color": "#475569"}
    out += [html.P(batch, style=small), html.P(replay, style=small)]
    return out


def explain_impl(run, step: int) -> tuple[list, go.Figure]:
    """The panel for the global step (pure: tested without a server)."""
    target = spike_at_or_before(run, step)
    if target is None:
        spikes = spike_steps(run)
        text = ("no loss spike recorded in this run" if not spikes else
                f"no loss spike at or before step {step:,}; the run's spikes: "
                + ", ".join(f"{s:,}" for s in spikes[:10]) + " (pick one in the anomaly list)")
        return [message(text)], empty_figure(text, height=300)
    note = "" if target == step else f"step {step:,} has no loss spike: explaining the last one before it, step {target:,}"
    e = explain(run, target)
    return explain_children(e, note), explain_figure(run, e)


def register(app, context: AppContext) -> None:
    """Follows the global step control: pick a loss spike in the anomaly list to explain it."""
    @app.callback(Output("ov-explain", "children"), Output("ov-explain-fig", "figure"),
                  Input("run-state", "data"), Input("step", "data"))
    @context.with_run(lambda msg: ([message(msg)], empty_figure(msg, height=300)))
    def draw_explain(run, step):
        return explain_impl(run, selected_step(step))
