"""Experts: tokens per expert (layer × expert) at the selected step, one layer's shares over time,
imbalance over time and the balance-bias values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, dcc, html

from inspector.dash_app.components import graph, panel
from inspector.dash_app.context import AppContext, selected_step
from inspector.dash_app.figures import (FLAG_MARKER, HOT_MARKER, add_flag_markers, colourscale, empty_figure,
                                        heatmap_figure, line_figure)
from inspector.views.downsample import bin_columns, downsample_indices
from inspector.views.experts import (ALL_RANKS, expert_bias, expert_counts, expert_share_over_time, expert_steps,
                                     imbalance_series)
from inspector.views.scales import count_scale, load_ratio, load_scale, share_scale
from inspector.views.steps import nearest_at_or_before
from inspector.views.summary import hot_experts, starved_experts

PATH = "/experts"
TITLE = "Experts"
NO_EXPERTS = "no expert load recorded in this run (not an MoE model, or the experts probe is off)"


def layout() -> html.Div:
    """Counts and bias at the step; imbalance and one layer's shares over time."""
    return html.Div(className="page", children=[
        panel(graph("exp-counts", 340)), panel(graph("exp-bias", 340)),
        panel(graph("exp-imbalance", 300), wide=True),
        panel(html.Div(className="controls", children=[
            html.Span("MoE layer"), dcc.Dropdown(id="exp-layer", options=[], value=None, clearable=False)]),
            graph("exp-share", 340), wide=True),
    ])


def _height(rows: int) -> int:
    return max(340, min(800, 22 * rows + 140))


def _ranks_said(run) -> str:
    """" · all N ranks summed" when the run has several ranks (every panel here shows the job's total)."""
    n = len(run.ranks())
    return f" · all {n} ranks summed" if n > 1 else ""


def counts_figure(run, step: int):
    """Tokens per expert (columns) per MoE layer (rows) at the nearest recorded step ≤ `step`, coloured
    from 0 (a normal expert never looks starved); the hover gives each load relative to balanced."""
    layers, counts = expert_counts(run, step=step, rank=ALL_RANKS)
    if not layers:
        return empty_figure(NO_EXPERTS, height=340)
    at = nearest_at_or_before(expert_steps(run, ALL_RANKS), step)
    scale = count_scale(counts)
    fig = heatmap_figure(counts, x=np.arange(counts.shape[1]), y=[f"L{l}" for l in layers],
                         title=f"tokens per expert at step {at:,}{_ranks_said(run)}", xtitle="expert",
                         ztitle=scale.short, height=_height(len(layers)), zmin=scale.lo, zmax=scale.hi)
    fig.update_layout(title_subtitle=dict(text=scale.label, font=dict(size=11)))
    fig.update_traces(customdata=load_ratio(counts),
                      hovertemplate="%{y} · expert %{x}<br>%{z:,} tokens · %{customdata:.2f}× balanced<extra></extra>")
    starved = [(layer, e, since) for layer, experts in starved_experts(run, step=at, rank=ALL_RANKS).items()
               for e, since in experts.items()]
    hot = [(layer, e, since) for layer, experts in hot_experts(run, step=at, rank=ALL_RANKS).items()
           for e, since in experts.items()]
    marks = [m for m, found in (("✕ = starved", starved), ("▲ = hot (≥ 3× balanced)", hot)) if found]
    if marks:
        fig.update_layout(title=f"tokens per expert at step {at:,}{_ranks_said(run)}; {', '.join(marks)}")
    for found, name, marker, says in ((starved, "starved", FLAG_MARKER, "starved: no token since step"),
                                      (hot, "hot", HOT_MARKER, "hot: ≥ 3× its balanced share since step")):
        if found:
            fig.add_trace(go.Scatter(x=[e for _, e, _ in found], y=[f"L{layer}" for layer, _, _ in found],
                                     customdata=[since for _, _, since in found], mode="markers", name=name,
                                     marker=marker,
                                     hovertemplate=f"%{{y}} · expert %{{x}} {says} %{{customdata}}<extra></extra>"))
    return fig


def bias_figure(run, step: int):
    """The router's balance bias per layer and expert (DeepSeek-V3 style routers), or why there is none."""
    layers, bias = expert_bias(run, step=step, rank=ALL_RANKS)
    if not layers:
        return empty_figure(NO_EXPERTS, height=340)
    if bias is None or not np.isfinite(bias).any():
        return empty_figure("this router has no balance bias", height=340)
    at = nearest_at_or_before(expert_steps(run, ALL_RANKS), step)
    return heatmap_figure(bias, x=np.arange(bias.shape[1]), y=[f"L{l}" for l in layers], colorscale="RdBu",
                          title=f"balance bias at step {at:,}", xtitle="expert", ztitle="bias",
                          height=_height(len(layers)), hover="%{y} · expert %{x}<br>bias %{z:.4g}",
                          zmin=-float(np.nanmax(np.abs(bias))) or None, zmax=float(np.nanmax(np.abs(bias))) or None)


MAX_SHARE_EXPERTS = 32
"""Above this many experts the share heatmap shows load against balanced (× balanced) instead of 0 … 1."""
MAX_IMBALANCE_LINES = 8
"""Above this many MoE layers the imbalance is drawn as a layer × step heatmap (58 lines are unreadable)."""


def imbalance_figure(run):
    """Imbalance (max/mean tokens) of every MoE layer over steps: lines (downsampled) for a few layers,
    a layer × step heatmap (each column the worst of its bin, so a spike stays) for many."""
    df = imbalance_series(run, rank=ALL_RANKS)
    if df["layer"].nunique() > MAX_IMBALANCE_LINES:
        wide = df.groupby(["layer", "step"])["imbalance"].max().unstack()
        steps, z = bin_columns(wide.columns.to_numpy(np.int64), wide.to_numpy(np.float64), 500, "max")
        hi = float(np.nanmax(z)) if np.isfinite(z).any() else 1.0
        return heatmap_figure(z, x=steps, y=[f"L{l}" for l in wide.index], title="expert imbalance (max / mean "
                              f"tokens) per layer · 1 (balanced) … {hi:.2f} (worst)", ztitle="max / mean",
                              height=_height(len(wide.index)), zmin=1.0, zmax=max(hi, 1.0 + 1e-6),
                              hover="%{y}<br>step %{x}<br>imbalance %{z:.2f}")
    series = {}
    for layer, sel in df.groupby("layer", sort=True):
        x, y = sel["step"].to_numpy(), sel["imbalance"].to_numpy(np.float64)
        idx = downsample_indices(x, y)
        series[f"L{layer}"] = pd.DataFrame({"step": x[idx], "value": y[idx]})
    return line_figure(series, title="expert imbalance (max / mean tokens) per layer", ytitle="imbalance",
                       height=300, empty=NO_EXPERTS)


def share_figure(run, layer):
    """Share of one layer's tokens per expert over steps, coloured on 0 … 1 (balanced share stated)."""
    if layer is None:
        return empty_figure(NO_EXPERTS, height=340)
    steps, share = expert_share_over_time(run, layer=int(layer), rank=ALL_RANKS)
    if share.size == 0:
        return empty_figure(f"no expert load for layer {layer}", height=340)
    experts = share.shape[0]
    starved = starved_experts(run, rank=ALL_RANKS).get(int(layer), {})
    hot = hot_experts(run, rank=ALL_RANKS).get(int(layer), {})
    labels = [f"⚠ E{e}" if e in starved else (f"▲ E{e}" if e in hot else f"E{e}") for e in range(experts)]
    flags = f"{'; ⚠ = starved' if starved else ''}{'; ▲ = hot' if hot else ''}"
    if experts > MAX_SHARE_EXPERTS:      # 1/256 of 0 … 1 is one dark colour: load against balanced instead
        scale = load_scale(share * experts)
        fig = heatmap_figure(share * experts, x=steps, y=labels, colorscale=colourscale(scale),
                             title=f"layer {layer}: load per expert over steps{flags} · {scale.label}",
                             ztitle=scale.short, height=max(340, min(800, 12 * experts + 140)),
                             zmin=scale.lo, zmax=scale.hi,
                             hover="%{y}<br>step %{x}<br>%{z:.2f}× balanced")
    else:
        scale = share_scale(share, experts)
        fig = heatmap_figure(share, x=steps, y=labels,
                             title=f"layer {layer}: share of tokens per expert over steps{flags} · {scale.label}",
                             ztitle=scale.short, height=max(340, min(800, 12 * experts + 140)),
                             zmin=scale.lo, zmax=scale.hi,
                             hover=f"%{{y}}<br>step %{{x}}<br>%{{z:.1%}} (balanced {1 / experts:.1%})")
    add_flag_markers(fig, {f"⚠ E{e}": since for e, since in starved.items()}, "starved")
    return add_flag_markers(fig, {f"▲ E{e}": since for e, since in hot.items()}, "hot", marker=HOT_MARKER)


def register(app, context: AppContext) -> None:
    """Counts and bias follow the step control; imbalance and shares follow the run."""
    @app.callback(Output("exp-counts", "figure"), Output("exp-bias", "figure"), Input("run-state", "data"),
                  Input("step", "data"))
    @context.with_run(lambda msg: (empty_figure(msg, height=340), empty_figure(msg, height=340)))
    def draw_step(run, step):
        s = selected_step(step)
        return counts_figure(run, s), bias_figure(run, s)

    @app.callback(Output("exp-imbalance", "figure"), Output("exp-share", "figure"), Output("exp-layer", "options"),
                  Output("exp-layer", "value"), Input("run-state", "data"), Input("exp-layer", "value"))
    @context.with_run(lambda msg: (empty_figure(msg, height=300), empty_figure(msg, height=340), [], None))
    def draw_run(run, layer):
        layers = sorted(imbalance_series(run, rank=ALL_RANKS)["layer"].unique().tolist())
        value = layer if layer in layers else (layers[0] if layers else None)
        return (imbalance_figure(run), share_figure(run, value),
                [{"label": f"layer {l}", "value": l} for l in layers], value)
