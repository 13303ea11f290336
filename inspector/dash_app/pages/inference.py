"""Inference: a run recorded with `watch(mode="inference")` (or `inspector generate --inspect`).

Top to bottom: the headline numbers; latency distributions (TTFT, TPOT) with their p50/p95;
throughput over time; batch and KV-cache occupancy; expert load in prefill vs decode (relative to
balanced, so the experts decode overloads stand out); and a request viewer: pick a request
(slowest first), see each output token's latency, and what a chosen token attended to.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html
from plotly.subplots import make_subplots

from inspector.dash_app.components import graph, panel
from inspector.dash_app.context import AppContext
from inspector.dash_app.figures import COLORWAY, TEMPLATE, empty_figure, heatmap_figure
from inspector.views import inference as views
from inspector.views.inference_cost import cost_text, sampled_cost
from inspector.views.live import LiveRun
from inspector.views.scales import load_ratio, load_scale, weight_scale

PATH = "/inference"
TITLE = "Inference"
NOT_INFERENCE = ("no inference records in this run: record generation with inspector.watch(model, run, "
                 "mode=\"inference\") or `inspector generate --inspect RUN`")
LOAD_COLORS = [[0.0, "#2563eb"], [0.5, "#f8fafc"], [1.0, "#dc2626"]]
"""Diverging ramp for load relative to balanced: blue starved, white balanced (1×), red hot."""


def layout() -> html.Div:
    """Headline, distributions, time series, experts by stage, request viewer."""
    def dropdown(id_: str, label: str, width: str = "160px") -> list:
        return [html.Span(label), dcc.Dropdown(id=id_, options=[], value=None, clearable=False,
                                               style={"minWidth": width})]

    return html.Div(className="page", children=[
        panel(html.Div(id="inf-headline", className="headline"), wide=True),
        panel(graph("inf-ttft", 280)), panel(graph("inf-tpot", 280)),
        panel(graph("inf-throughput", 300), wide=True),
        panel(graph("inf-occupancy", 320), wide=True),
        panel(graph("inf-experts", 360), wide=True),
        panel(html.Div(className="controls", children=dropdown("inf-request", "request", "420px")),
              graph("inf-tokens", 280), wide=True),
        panel(html.Div(className="controls", children=[
            *dropdown("inf-attn-step", "query", "320px"), *dropdown("inf-attn-layer", "layer", "110px"),
            *dropdown("inf-attn-head", "head", "100px")]), graph("inf-attention", 320), wide=True),
    ])


def _ms(v: float) -> str:
    return "N/A" if v != v else f"{v:,.1f} ms"


def headline(run: LiveRun) -> list:
    """One line of the numbers a serving engineer looks at first."""
    reqs, iters = views.requests_frame(run), views.iterations_frame(run)
    t = views.phase_totals(iters, reqs)
    lat = views.latency_percentiles(reqs).set_index("metric")
    kv = "N/A" if t.peak_kv_cache_bytes != t.peak_kv_cache_bytes else \
        f"{t.peak_kv_cache_bytes / 2**20:,.2f} MiB (decompressed {t.peak_kv_cache_decompressed_bytes / 2**20:,.2f} MiB)"
    items = [("requests", f"{t.requests:,}"), ("iterations", f"{t.iterations:,}"),
             ("generated tokens/s", f"{t.generation_tokens_per_s:,.1f}"),
             ("prefill tokens/s", f"{t.prefill_tokens_per_s:,.0f}"), ("decode tokens/s", f"{t.decode_tokens_per_s:,.1f}"),
             ("TTFT p50 / p95", f"{_ms(lat.loc['TTFT', 'p50'])} / {_ms(lat.loc['TTFT', 'p95'])}"),
             ("TPOT p50 / p95", f"{_ms(lat.loc['TPOT', 'p50'])} / {_ms(lat.loc['TPOT', 'p95'])}"),
             ("peak batch", f"{t.peak_batch}"), ("KV cache peak", kv)]
    costs = sampled_cost(run, iters)
    if costs:   # the Inspector's own sampled iterations are in the latencies: say how much
        items.append(("Inspector's sampled work", f"{cost_text(costs)}, included above"))
    return [html.Span([html.B(f"{k}: "), v], className="stat") for k, v in items]


def latency_figure(run: LiveRun, metric: str, title: str) -> go.Figure:
    """Histogram of one request latency (ms) with dashed p50 and p95 lines."""
    values = views.latency_values(views.requests_frame(run), metric)
    if values.size == 0:
        return empty_figure(f"{title}: no finished requests yet", height=280)
    fig = go.Figure(go.Histogram(x=values, nbinsx=min(60, max(10, values.size // 2)), marker_color=COLORWAY[0],
                                 hovertemplate="%{x} ms<br>%{y} requests<extra></extra>"),
                    layout=dict(template=TEMPLATE, height=280, title=f"{title} ({values.size} requests)",
                                xaxis=dict(title="ms"), yaxis=dict(title="requests"), bargap=0.05))
    for q, dash in ((50, "dash"), (95, "dot")):
        v = float(np.percentile(values, q))
        fig.add_vline(x=v, line=dict(color="#dc2626" if q == 95 else "#0f172a", width=1.3, dash=dash),
                      annotation_text=f"p{q} {v:,.1f}", annotation_position="top right", annotation_font_size=11)
    return fig


def throughput_figure(run: LiveRun) -> go.Figure:
    """Prompt (prefill) and generated (decode) tokens per second over time, per 8-iteration window."""
    ts = views.throughput_series(views.iterations_frame(run))
    if ts.empty:
        return empty_figure(NOT_INFERENCE, height=300)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=ts["time_s"], y=ts["generation_tokens_per_s"], name="generated tokens/s",
                             line=dict(color=COLORWAY[0], width=1.6), customdata=ts["step"],
                             hovertemplate="%{x:.2f} s (iteration %{customdata})<br>%{y:,.1f} generated tokens/s<extra></extra>"))
    fig.add_trace(go.Scatter(x=ts["time_s"], y=ts["prompt_tokens_per_s"], name="prompt tokens/s (right)",
                             line=dict(color=COLORWAY[3], width=1.2), customdata=ts["step"],
                             hovertemplate="%{x:.2f} s (iteration %{customdata})<br>%{y:,.0f} prompt tokens/s<extra></extra>"),
                  secondary_y=True)
    fig.update_layout(template=TEMPLATE, height=300, title="throughput over time (8-iteration windows)",
                      xaxis_title="seconds since the first iteration")
    fig.update_yaxes(title_text="generated tokens/s", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="prompt tokens/s", rangemode="tozero", secondary_y=True, showgrid=False)
    return fig


def occupancy_figure(run: LiveRun) -> go.Figure:
    """Batch size and waiting requests (left) and KV-cache usage of the token budget (right) over time."""
    ts = views.throughput_series(views.iterations_frame(run))
    if ts.empty:
        return empty_figure(NOT_INFERENCE, height=320)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=ts["time_s"], y=ts["batch_size"], name="running (batch)", line_shape="hv",
                             line=dict(color=COLORWAY[0], width=1.6)))
    fig.add_trace(go.Scatter(x=ts["time_s"], y=ts["num_requests_waiting"], name="waiting", line_shape="hv",
                             line=dict(color=COLORWAY[1], width=1.4)))
    usage = ts["kv_cache_usage_perc"].astype(float) * 100
    if usage.notna().any():
        fig.add_trace(go.Scatter(x=ts["time_s"], y=usage, name="KV cache usage % (right)",
                                 line=dict(color=COLORWAY[2], width=1.2, dash="dot"),
                                 customdata=np.stack([ts["kv_cache_bytes"] / 2**20,
                                                      ts["kv_cache_decompressed_bytes"] / 2**20], -1),
                                 hovertemplate="%{y:.1f}% of the token budget<br>%{customdata[0]:,.2f} MiB latent "
                                               "(decompressed %{customdata[1]:,.2f} MiB)<extra></extra>"),
                      secondary_y=True)
    fig.update_layout(template=TEMPLATE, height=320, title="batch and KV-cache occupancy",
                      xaxis_title="seconds since the first iteration")
    fig.update_yaxes(title_text="requests", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="% of token budget", range=[0, 100], secondary_y=True, showgrid=False)
    return fig


def experts_figure(run: LiveRun) -> go.Figure:
    """Load relative to balanced [layer × expert], prefill beside decode, on one diverging scale
    centred on 1× (so a hot expert is red in whichever stage overloads it)."""
    parts = {s: views.stage_counts(run, stage=s) for s in views.STAGES}
    parts = {s: p for s, p in parts.items() if p[0]}
    if not parts:
        return empty_figure("no expert load by stage recorded (not an MoE model, or the experts probe is off)",
                            height=360)
    ratios = {s: load_ratio(c) for s, (_, _, c) in parts.items()}
    scale = load_scale(np.concatenate([r.reshape(-1) for r in ratios.values()]))
    fig = make_subplots(rows=1, cols=len(parts), subplot_titles=[f"{s} ({int(parts[s][2].sum()):,} assignments)"
                                                                 for s in parts], horizontal_spacing=0.06)
    for i, (stage, (layers, _, counts)) in enumerate(parts.items(), start=1):
        r = ratios[stage]
        fig.add_trace(go.Heatmap(z=scale.position(r), x=np.arange(counts.shape[1]), y=[f"L{x}" for x in layers],
                                 customdata=np.stack([r, counts], -1), zmin=0, zmax=1, colorscale=LOAD_COLORS,
                                 showscale=i == len(parts),
                                 colorbar=dict(title=dict(text=scale.short, side="right"), thickness=12,
                                               tickvals=[0, 0.5, 1], ticktext=["0", "1×", f"{scale.hi:.3g}×"]),
                                 hovertemplate=f"{stage} · %{{y}} · expert %{{x}}<br>%{{customdata[1]:,}} tokens · "
                                               "%{customdata[0]:.2f}× balanced<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text="expert", row=1, col=i)
        fig.update_yaxes(autorange="reversed", row=1, col=i)
    rows = max(len(p[0]) for p in parts.values())
    fig.update_layout(template=TEMPLATE, height=max(300, min(800, 22 * rows + 160)),
                      title=dict(text=f"expert load, prefill vs decode (whole run) · {scale.label}"))
    return fig


def request_options(run: LiveRun) -> list[dict]:
    """Every finished request, slowest end-to-end first."""
    reqs = views.slowest_requests(views.requests_frame(run), n=10_000)
    maps = views.requests_with_attention(run)
    return [{"label": f"#{int(r.request_id)} · {r.e2e_request_latency_s * 1e3:,.0f} ms e2e · TTFT "
                      f"{r.time_to_first_token_s * 1e3:,.0f} ms · {int(r.prompt_tokens)}→{int(r.generation_tokens)} tokens · "
                      f"{r.finished_reason}{' · attention' if int(r.request_id) in maps else ''}",
             "value": int(r.request_id)} for r in reqs.itertuples()
            if r.e2e_request_latency_s == r.e2e_request_latency_s]


def tokens_figure(run: LiveRun, request_id: int | None) -> go.Figure:
    """Each output token's latency (the first: TTFT), labelled with its text."""
    row = None if request_id is None else views.request_row(views.requests_frame(run), int(request_id))
    if row is None:
        return empty_figure("pick a request", height=280)
    lat = views.token_latencies(row)
    labels, prompt_len = views.request_tokens(row)
    out = labels[prompt_len:] if len(labels) > prompt_len else [""] * len(lat)
    text = [views.printable_token(t) if t else "" for t in out[:len(lat)]]
    colors = [COLORWAY[3]] + [COLORWAY[0]] * max(len(lat) - 1, 0)
    fig = go.Figure(go.Bar(x=lat["token"], y=lat["latency_ms"], marker_color=colors, text=text,
                           textposition="outside", cliponaxis=False, customdata=lat["since_arrival_ms"],
                           hovertemplate="output token %{x} «%{text}»<br>%{y:,.2f} ms after the previous token"
                                         "<br>%{customdata:,.1f} ms since arrival<extra></extra>"),
                    layout=dict(template=TEMPLATE, height=280, xaxis=dict(title="output token"),
                                yaxis=dict(title="ms (log)", type="log"),
                                title=f"request #{int(request_id)}: latency of each output token "
                                      f"(first = time to first token, queue {row['queue_time_s'] * 1e3:,.1f} ms)"))
    return fig


def attention_choices(run: LiveRun, request_id: int | None) -> list[dict]:
    """The recorded attention maps of a request: its prefill, and the output tokens that were queries."""
    if request_id is None:
        return []
    return [{"label": label, "value": step} for step, label in views.attention_choices(run, int(request_id))]


def attention_figure(run: LiveRun, request_id: int | None, step: int | None, layer: int | None,
                     head: int | None) -> go.Figure:
    """What the chosen query token(s) attended to over the whole cache, with token labels: a bar per
    key for one decoded token, a heatmap for a prefill."""
    if None in (request_id, step, layer, head):
        return empty_figure("no attention map recorded for this request (maps are kept every N iterations, "
                            "for batch row 0)", height=320)
    a = views.request_attention(run, request_id=int(request_id), step=int(step), layer=int(layer), head=int(head))
    if a is None:
        return empty_figure("no attention map for this choice", height=320)
    row = views.request_row(views.requests_frame(run), int(request_id))
    prompt_len = int(row["prompt_tokens"]) if row is not None else 0
    keys = [f"{p}:{views.printable_token(t)}" for p, t in zip(a.key_positions, a.key_labels)]
    scale = weight_scale(a.probs)
    if a.probs.shape[0] == 1:
        q = a.query_positions[0]
        colors = [COLORWAY[8] if p < prompt_len else COLORWAY[0] for p in a.key_positions]
        fig = go.Figure(go.Bar(x=keys, y=a.probs[0], marker_color=colors,
                               hovertemplate="key %{x}<br>weight %{y:.4f}<extra></extra>"),
                        layout=dict(template=TEMPLATE, height=320, yaxis=dict(title="weight", rangemode="tozero"),
                                    xaxis=dict(title="key token (grey: prompt, blue: output)", tickangle=-60),
                                    title=f"layer {layer} head {head}: what token {q} «{views.printable_token(a.query_labels[0])}» "
                                          f"attended to over the {len(keys)} cached tokens"))
        fig.add_hline(y=1 / len(keys), line=dict(color="#64748b", width=1, dash="dash"),
                      annotation_text=f"uniform 1/{len(keys)}", annotation_position="top right",
                      annotation_font=dict(size=11, color="#64748b"))
        return fig
    queries = [f"{p}:{views.printable_token(t)}" for p, t in zip(a.query_positions, a.query_labels)]
    fig = heatmap_figure(scale.position(a.probs), x=keys, y=queries, xtitle="key token", ytitle="query token",
                         title=f"layer {layer} head {head}: prefill attention · {scale.label}", colorscale="Viridis",
                         height=max(320, min(900, 12 * len(queries) + 160)), zmin=0, zmax=1,
                         hover="query %{y}<br>key %{x}<br>√weight %{z:.3f}")
    return fig


def register(app, context: AppContext) -> None:
    """The run-wide figures follow the run; the request viewer follows its dropdowns."""
    @app.callback(Output("inf-headline", "children"), Output("inf-ttft", "figure"), Output("inf-tpot", "figure"),
                  Output("inf-throughput", "figure"), Output("inf-occupancy", "figure"),
                  Output("inf-experts", "figure"), Output("inf-request", "options"), Output("inf-request", "value"),
                  Input("run-state", "data"), State("inf-request", "value"))
    @context.with_run(lambda msg: (msg, *(empty_figure(msg, height=h) for h in (280, 280, 300, 320, 360)), [], None))
    def draw_run(run, current):
        if not views.is_inference_run(run):
            return (NOT_INFERENCE, *(empty_figure(NOT_INFERENCE, height=h) for h in (280, 280, 300, 320, 360)),
                    [], None)
        options = request_options(run)
        values = [o["value"] for o in options]
        value = current if current in values else (values[0] if values else None)
        return (headline(run), latency_figure(run, "time_to_first_token_s", "time to first token (TTFT)"),
                latency_figure(run, "time_per_output_token_s", "time per output token (TPOT)"),
                throughput_figure(run), occupancy_figure(run), experts_figure(run), options, value)

    @app.callback(Output("inf-tokens", "figure"), Output("inf-attn-step", "options"), Output("inf-attn-step", "value"),
                  Input("run-state", "data"), Input("inf-request", "value"), State("inf-attn-step", "value"))
    @context.with_run(lambda msg: (empty_figure(msg, height=280), [], None))
    def draw_request(run, request_id, current):
        options = attention_choices(run, request_id)
        values = [o["value"] for o in options]
        # default: the last output token recorded as a query (the most context), else the prefill
        value = current if current in values else (values[-1] if values else None)
        return tokens_figure(run, request_id), options, value

    @app.callback(Output("inf-attn-layer", "options"), Output("inf-attn-layer", "value"),
                  Output("inf-attn-head", "options"), Output("inf-attn-head", "value"),
                  Input("run-state", "data"), Input("inf-attn-step", "value"),
                  State("inf-attn-layer", "value"), State("inf-attn-head", "value"))
    @context.with_run(lambda msg: ([], None, [], None))
    def pick_layer(run, step, layer, head):
        if step is None:
            return [], None, [], None
        layers = views.attention_layers_at(run, int(step))
        layer = layer if layer in layers else (layers[0] if layers else None)
        heads = views.attention_heads_at(run, int(step), layer) if layer is not None else []
        head = head if head in heads else (heads[0] if heads else None)
        return ([{"label": f"L{x}", "value": x} for x in layers], layer,
                [{"label": f"h{x}", "value": x} for x in heads], head)

    @app.callback(Output("inf-attention", "figure"), Input("run-state", "data"), Input("inf-request", "value"),
                  Input("inf-attn-step", "value"), Input("inf-attn-layer", "value"), Input("inf-attn-head", "value"))
    @context.with_run(lambda msg: empty_figure(msg, height=320))
    def draw_attention(run, request_id, step, layer, head):
        return attention_figure(run, request_id, step, layer, head)
