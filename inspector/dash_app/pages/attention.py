"""Attention: a layer × head grid of small maps at the selected step, one head large, entropy over steps."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from dash import Input, Output, html

from inspector.dash_app.components import graph, panel
from inspector.dash_app.context import AppContext, selected_step
from inspector.dash_app.figures import TEMPLATE, add_flag_markers, colourscale, empty_figure, heatmap_figure
from inspector.views.attention import (attention_grid, attention_matrix, attention_rows, attention_steps,
                                       collapsed_heads, distance_profile, entropy_matrix, entropy_matrix_scale,
                                       entropy_nonfinite, head_stats)
from inspector.views.downsample import bin_columns
from inspector.views.scales import weight_scale
from inspector.views.steps import nearest_at_or_before

PATH = "/attention"
TITLE = "Attention"
GAP = 2
MAX_KEYS = 512
MAX_GRID_CELLS = 200_000
NO_ATTENTION = "no attention maps recorded in this run (attention probe off, or no attention layers found)"
def layout() -> html.Div:
    """Grid and large map side by side; the head's full rows and every head's distance profile; entropy."""
    return html.Div(className="page", children=[
        panel(graph("attn-grid", 460)), panel(graph("attn-big", 460)),
        panel(graph("attn-rows", 300)), panel(graph("attn-distance", 300)),
        panel(graph("attn-entropy", 340), wide=True),
    ])


def grid_maps(run, step: int) -> dict:
    """`attention_grid` at a map size that keeps the mosaic under MAX_GRID_CELLS (many layers × heads: smaller maps)."""
    grid = attention_grid(run, step=step)
    if grid:
        n = len({k[0] for k in grid}) * len({k[1] for k in grid})
        size = int((MAX_GRID_CELLS / n) ** 0.5) - GAP
        if size < 24:
            grid = attention_grid(run, step=step, size=max(size, 3))
    return grid


def grid_geometry(grid: dict) -> tuple[list[int], list[int], int]:
    """(layers, heads, cell size in grid units) of an `attention_grid` mosaic."""
    layers = sorted({layer for layer, _ in grid})
    heads = sorted({head for _, head in grid})
    size = max(max(m.shape) for m in grid.values())
    return layers, heads, size + GAP


def grid_figure(run, step: int) -> go.Figure:
    """All (layer, head) maps at `step` as one mosaic heatmap; collapsed heads framed in red."""
    at = nearest_at_or_before(attention_steps(run), step)
    grid = grid_maps(run, step)
    if not grid:
        return empty_figure(NO_ATTENTION, height=460)
    layers, heads, cell = grid_geometry(grid)
    z = np.full((len(layers) * cell - GAP, len(heads) * cell - GAP), np.nan, dtype=np.float32)
    for (layer, head), m in grid.items():
        r, c = layers.index(layer) * cell, heads.index(head) * cell
        z[r:r + m.shape[0], c:c + m.shape[1]] = m
    scale = weight_scale(z)
    fig = go.Figure(go.Heatmap(z=z, colorscale=colourscale(scale), zmin=scale.lo, zmax=scale.hi, hoverongaps=False,
                               showscale=False, hovertemplate="weight %{z:.3f}<extra>click for this head</extra>"),
                    layout=dict(template=TEMPLATE, height=460,
                                title=dict(text=f"attention at step {at:,} (layer × head; click a head)",
                                           subtitle=dict(text=scale.label, font=dict(size=11))),
                                meta={"layers": layers, "heads": heads, "cell": cell, "step": at,
                                      "selected": step, "cells": len(grid)},
                                xaxis=dict(tickvals=[heads.index(h) * cell + (cell - GAP) / 2 for h in heads],
                                           ticktext=[f"H{h}" for h in heads], showgrid=False, zeroline=False,
                                           side="top", constrain="domain"),
                                yaxis=dict(tickvals=[layers.index(l) * cell + (cell - GAP) / 2 for l in layers],
                                           ticktext=[f"L{l}" for l in layers], showgrid=False, zeroline=False,
                                           autorange="reversed", scaleanchor="x", constrain="domain"),
                                margin=dict(l=48, r=12, t=64, b=12)))
    stats = head_stats(run, step=step)
    for row in stats[stats["collapsed"].astype(bool)].itertuples() if len(stats) else []:
        if row.layer in layers and row.head in heads:
            r, c = layers.index(row.layer) * cell, heads.index(row.head) * cell
            fig.add_shape(type="rect", x0=c - 1, x1=c + cell - GAP, y0=r - 1, y1=r + cell - GAP,
                          line=dict(color="#dc2626", width=3))
    return fig


def pick_head(run, step: int, click: dict | None) -> tuple[int, int] | None:
    """The (layer, head) a click on the grid points at; the first recorded head without a click."""
    grid = grid_maps(run, step)
    if not grid:
        return None
    layers, heads, cell = grid_geometry(grid)
    if click and click.get("points"):
        p = click["points"][0]
        layer_i, head_i = int(p["y"]) // cell, int(p["x"]) // cell
        if layer_i < len(layers) and head_i < len(heads) and (layers[layer_i], heads[head_i]) in grid:
            return layers[layer_i], heads[head_i]
    return min(grid)


def big_figure(run, step: int, click: dict | None) -> go.Figure:
    """One head's map at full resolution (keys binned by max above 512), with token labels if recorded;
    coloured on 0 … 1 with a √ ramp, so the same weight has the same colour on every head and a uniform
    row is one flat colour (never stretched into a peak)."""
    chosen = pick_head(run, step, click)
    if chosen is None:
        return empty_figure(NO_ATTENTION, height=460)
    layer, head = chosen
    m = attention_matrix(run, step=step, layer=layer, head=head)
    if m is None:
        return empty_figure(f"no map for layer {layer} head {head} at step {step}", height=460)
    probs = m.probs
    keys = m.key_ids
    if probs.shape[1] > MAX_KEYS:
        keys, probs = bin_columns(keys, probs, MAX_KEYS, "max")
    tokens = m.tokens if m.key_pool == 1 else None      # a pooled column spans several tokens
    xt = [tokens[k] if tokens and k < len(tokens) else str(k) for k in keys]
    yt = [tokens[r] if tokens and r < len(tokens) else str(r) for r in m.row_ids]
    text = None
    if probs.size <= 20000:
        text = [[f"{q} → {k}" for k in xt] for q in yt]
    scale = weight_scale(m.probs)
    fig = go.Figure(go.Heatmap(z=probs, x=keys, y=m.row_ids, colorscale=colourscale(scale), zmin=scale.lo,
                               zmax=scale.hi, text=text,
                               colorbar=dict(thickness=12, title=dict(text=scale.label, side="right")),
                               hovertemplate=("%{text}<br>" if text else "query %{y} · key %{x}<br>")
                               + "weight %{z:.4f}<extra></extra>"),
                    layout=dict(template=TEMPLATE, height=460, meta={"layer": layer, "head": head, "step": m.step,
                                                                   "selected": step},
                                title=dict(text=f"layer {layer} · head {head} · step {m.step:,}",
                                           subtitle=dict(text=m.pooling or "", font=dict(size=11))),
                                xaxis=dict(title="key position", side="bottom", constrain="domain"),
                                yaxis=dict(title="query position", autorange="reversed",
                                           scaleanchor="x" if m.row_pool == m.key_pool else None,
                                           constrain="domain")))
    if tokens:
        every = max(1, len(keys) // 48)
        fig.update_xaxes(tickvals=keys[::every], ticktext=xt[::every], tickangle=-60, tickfont=dict(size=9))
        every_r = max(1, len(m.row_ids) // 48)
        fig.update_yaxes(tickvals=m.row_ids[::every_r], ticktext=yt[::every_r], tickfont=dict(size=9))
    return fig


def rows_figure(run, step: int, click: dict | None) -> go.Figure:
    """The chosen head's full rows (query positions kept whole beside a pooled map): weight per key position."""
    chosen = pick_head(run, step, click)
    if chosen is None:
        return empty_figure(NO_ATTENTION, height=300)
    m = attention_matrix(run, step=step, layer=chosen[0], head=chosen[1])
    rows = attention_rows(run, step=m.step, layer=chosen[0], head=chosen[1]) if m is not None else None
    if rows is None:
        text = ("the map above holds every query row exactly" if m is not None and m.pooling is None
                else "no full rows recorded with this map")
        return empty_figure(text, height=300)
    fig = go.Figure(layout=dict(template=TEMPLATE, height=300,
                                title=f"full rows · layer {rows.layer} · head {rows.head} · step {rows.step:,}",
                                xaxis=dict(title="key position"), yaxis=dict(title="weight", rangemode="tozero"),
                                legend=dict(orientation="h", y=-0.3)))
    for i, pos in enumerate(rows.positions):
        fig.add_trace(go.Scattergl(x=np.arange(rows.probs.shape[1]), y=rows.probs[i], mode="lines",
                                   name=f"query {pos:,}", line=dict(width=1),
                                   hovertemplate=f"query {pos:,} → key %{{x}}<br>weight %{{y:.4f}}<extra></extra>"))
    return fig


def distance_figure(run, step: int) -> go.Figure:
    """Every head's mean weight per query−key distance bucket at the step (local heads bright on the
    left, long-range and sink heads on the right); 0 … 1, the same colour for the same weight."""
    prof = distance_profile(run, step=step)
    if prof is None:
        return empty_figure("no distance profile in this run (recorded by newer versions of the probe)", height=300)
    z = np.column_stack([prof.sink_mass, prof.weights])
    x = ["sink (first 4)"] + prof.buckets
    scale = weight_scale(z)
    return heatmap_figure(z, x=x, y=prof.labels, title=f"where heads look · step {prof.step:,} · {scale.label}",
                          xtitle="query − key distance (tokens)", ztitle=scale.short,
                          height=max(300, min(900, 14 * len(prof.labels) + 140)), colorscale=colourscale(scale),
                          zmin=scale.lo, zmax=scale.hi,
                          hover="%{y}<br>distance %{x}<br>weight %{z:.3f}")


def entropy_figure(run) -> go.Figure:
    """Per-head mean entropy over steps on 0 … ln(keys), low (collapse) in dark red; heads ever flagged
    as collapsed marked ⚠ and with an ✕ where it began. The title states the data's true range."""
    labels, steps, z = entropy_matrix(run)
    if not labels:
        return empty_figure("no attention statistics recorded in this run", height=340)
    scale = entropy_matrix_scale(run, z)
    flagged = {f"L{l}·H{h}": s for l, h, s in collapsed_heads(run)}
    shown = [f"⚠ {lab}" if lab in flagged else lab for lab in labels]
    height = max(340, min(900, 14 * len(labels) + 120))
    fig = heatmap_figure(z, x=steps, y=shown, title=f"attention entropy per head; ⚠ = collapsed · {scale.label}",
                         ztitle=scale.short, height=height, colorscale=colourscale(scale), zmin=scale.lo,
                         zmax=scale.hi, hover=f"%{{y}}<br>step %{{x}}<br>entropy %{{z:.4f}} of max {scale.hi:.3f}",
                         nonfinite=entropy_nonfinite(run))
    return add_flag_markers(fig, {f"⚠ {k}": s for k, s in flagged.items()}, "collapsed")


def register(app, context: AppContext) -> None:
    """Grid and large map follow the step control; entropy follows the run."""
    @app.callback(Output("attn-grid", "figure"), Input("run-state", "data"), Input("step", "data"))
    @context.with_run(lambda msg: empty_figure(msg, height=460))
    def draw_grid(run, step):
        return grid_figure(run, selected_step(step))

    @app.callback(Output("attn-big", "figure"), Input("run-state", "data"), Input("step", "data"),
                  Input("attn-grid", "clickData"))
    @context.with_run(lambda msg: empty_figure(msg, height=460))
    def draw_big(run, step, click):
        return big_figure(run, selected_step(step), click)

    @app.callback(Output("attn-rows", "figure"), Input("run-state", "data"), Input("step", "data"),
                  Input("attn-grid", "clickData"))
    @context.with_run(lambda msg: empty_figure(msg, height=300))
    def draw_rows(run, step, click):
        return rows_figure(run, selected_step(step), click)

    @app.callback(Output("attn-distance", "figure"), Input("run-state", "data"), Input("step", "data"))
    @context.with_run(lambda msg: empty_figure(msg, height=300))
    def draw_distance(run, step):
        return distance_figure(run, selected_step(step))

    @app.callback(Output("attn-entropy", "figure"), Input("run-state", "data"))
    @context.with_run(lambda msg: empty_figure(msg, height=340))
    def draw_entropy(run):
        return entropy_figure(run)
