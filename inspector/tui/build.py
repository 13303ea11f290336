"""Turn a LiveRun and a Request into the payload one screen draws (runs on the poller thread)."""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import pandas as pd

from inspector.tui.state import (RUN_SERIES, AttentionData, ExpertsData, InferenceData, PluginData, RanksData,
                                 Request, RunData)
from inspector.tui.screens.hang import HangData
from inspector.tui.screens.ranks import RanksPayload
from inspector.views import anomalies, attention, experts, inference, ranks, series, summary, timing
from inspector.views.hang import HangVerdict, stuck_table
from inspector.views.inference_cost import cost_text, sampled_cost
from inspector.views.live import LiveRun
from inspector.views.steps import nearest_at_or_before

SERIES_POINTS = 240


def build_ranks(run: LiveRun, req: Request, hang: HangVerdict | None = None) -> RanksData:
    """Rank table, its min/median/max summary and the step-time histories, over the window ending at
    the request's cursor (the newest steps while following), with the hang verdict for the banner."""
    table = ranks.rank_table(run, at=req.cursor, hang=hang)
    summary = ranks.rank_summary(table) if not table.empty else pd.DataFrame()
    return RanksPayload(table=table, summary=summary, history=ranks.step_time_histories(run, last=60, at=req.cursor),
                        at=req.cursor, hang=hang)


def build_hang(run: LiveRun, req: Request, cursor: int, hang: HangVerdict | None = None) -> HangData:
    """The hang view: the verdict the poller computed and its stuck-ranks table."""
    return HangData(verdict=hang, rows=stuck_table(hang) if hang is not None else [])


def _value_at(df: pd.DataFrame, step: int) -> float:
    if df.empty:
        return float("nan")
    steps = df["step"].to_numpy()
    i = int(np.searchsorted(steps, step, side="right")) - 1
    return float(df["value"].iloc[max(i, 0)])


def build_run(run: LiveRun, req: Request, cursor: int) -> RunData:
    """Loss, grad norm and learning-rate series up to the cursor, phase shares, anomaly feed."""
    names = set(series.scalar_names(run))
    picked: dict[str, str | None] = {}
    data: dict[str, pd.DataFrame] = {}
    at: dict[str, float] = {}
    for title, candidates in RUN_SERIES.items():
        name = next((c for c in candidates if c in names), None)
        picked[title] = name
        if name is None:
            data[title] = pd.DataFrame(columns=["step", "value"])
            continue
        full = series.scalar_series(run, name, rank=req.rank, max_points=1 << 62)
        upto = full[full["step"] <= cursor]
        data[title] = series.downsample_series(upto["step"].to_numpy(), upto["value"].to_numpy(), SERIES_POINTS)
        at[title] = _value_at(full, cursor)
    return RunData(series=data, series_names=picked, shares=timing.phase_shares(run, rank=req.rank),
                   anomalies=anomalies.anomaly_list(run, limit=200), at_cursor=at,
                   clip_threshold=series.clip_threshold(run, rank=req.rank))


def _pick(options: list[int], wanted: int | None) -> int | None:
    if not options:
        return None
    return wanted if wanted in options else options[0]


def _heads(run: LiveRun, step: int, layer: int, req: Request) -> list[int]:
    for head in dict.fromkeys([req.head if req.head is not None else 0, 0]):
        found = attention.attention_matrix(run, step=step, layer=layer, head=head, rank=req.rank)
        if found is not None:
            return found.heads
    return sorted(h for (lay, h) in attention.attention_grid(run, step=step, rank=req.rank) if lay == layer)


def build_attention(run: LiveRun, req: Request, cursor: int) -> AttentionData:
    """The recorded attention steps, the chosen layer/head's map at the step ≤ cursor, head stats."""
    steps = attention.attention_steps(run, req.rank)
    step = nearest_at_or_before(steps, cursor)
    if step is None:
        return AttentionData(steps=[], step=None, layers=[], layer=None, heads=[], head=None, matrix=None,
                             stats=attention.head_stats(run, step=cursor, rank=req.rank))
    layers = attention.attention_layers(run, step=step, rank=req.rank)
    layer = _pick(layers, req.layer)
    heads: list[int] = []
    matrix = None
    pools = None
    if layer is not None:
        heads = _heads(run, step, layer, req)
        chosen = _pick(heads, req.head)
        found = attention.attention_matrix(run, step=step, layer=layer, head=chosen, rank=req.rank) \
            if chosen is not None else None
        matrix = found.probs if found is not None else None
        if found is not None and found.pooling is not None:
            pools = (found.row_pool, found.key_pool, int(found.query_len or 0), int(found.key_len or 0))
    head = _pick(heads, req.head)
    return AttentionData(steps=steps, step=step, layers=layers, layer=layer, heads=heads, head=head,
                         matrix=matrix, stats=attention.head_stats(run, step=step, rank=req.rank), pools=pools)


def build_experts(run: LiveRun, req: Request, cursor: int) -> ExpertsData:
    """Tokens per expert per layer at the recorded step ≤ cursor, with each layer's imbalance and
    the experts starved at that step."""
    steps = experts.expert_steps(run, req.rank)
    step = nearest_at_or_before(steps, cursor)
    if step is None:
        return ExpertsData(steps=[], step=None, layers=[], counts=np.zeros((0, 0)), imbalance=pd.DataFrame())
    layers, counts = experts.expert_counts(run, step=step, rank=req.rank)
    imb = experts.imbalance_series(run, rank=req.rank)
    return ExpertsData(steps=steps, step=step, layers=layers, counts=counts,
                       imbalance=imb[imb["step"] == step].reset_index(drop=True),
                       starved=summary.starved_experts(run, step=step, rank=req.rank))


def build_inference(run: LiveRun, req: Request, cursor: int) -> InferenceData:
    """The run-wide inference numbers and the chosen request (default: the slowest end to end)."""
    reqs = inference.requests_frame(run, rank=req.rank)
    iters = inference.iterations_frame(run, rank=req.rank)
    stages = {}
    for stage in inference.STAGES:
        layers, _, counts = inference.stage_counts(run, stage=stage, rank=req.rank)
        if layers:
            stages[stage] = (layers, counts)
    slowest = inference.slowest_requests(reqs, n=10_000)
    data = InferenceData(totals=inference.phase_totals(iters, reqs), latency=inference.latency_percentiles(reqs),
                         series=inference.throughput_series(iters, max_points=240), stages=stages,
                         imbalance=inference.imbalance_by_stage(run, rank=req.rank), requests=slowest,
                         sampled=cost_text(costs) if (costs := sampled_cost(run, iters, rank=req.rank)) else "")
    ids = slowest["request_id"].astype(int).tolist()
    if not ids:
        return data
    rid = req.request_id if req.request_id in ids else ids[0]
    row = inference.request_row(reqs, rid)
    data.request_id = rid
    data.tokens, data.prompt_len = inference.request_tokens(row)
    data.latencies_ms = inference.token_latencies(row)["latency_ms"].to_numpy()
    queue = row.get("queue_time_s")
    data.queue_ms = float(queue) * 1e3 if queue is not None and queue == queue else float("nan")
    data.choices = inference.attention_choices(run, rid, rank=req.rank)
    steps = [s for s, _ in data.choices]
    if not steps:
        return data
    data.query = req.query if req.query in steps else steps[-1]
    data.layers = inference.attention_layers_at(run, data.query, rank=req.rank)
    data.layer = _pick(data.layers, req.layer)
    if data.layer is not None:
        data.heads = inference.attention_heads_at(run, data.query, data.layer, rank=req.rank)
        data.head = _pick(data.heads, req.head)
    if data.head is not None:
        data.attention = inference.request_attention(run, request_id=rid, step=data.query, layer=data.layer,
                                                     head=data.head, rank=req.rank)
    return data


def build_plugin(run: LiveRun, req: Request, cursor: int) -> PluginData:
    """What the plugin's render function returns for the cursor step."""
    from inspector.plugins import load_plugins

    name = req.screen.split(":", 1)[1]
    entry = next(s for s in load_plugins().tui_screens if s.name == name)
    return PluginData(plugin=entry.plugin, renderable=entry.render(run, cursor))


BUILDERS = {"ranks": lambda run, req, cursor: build_ranks(run, req), "run": build_run,
            "attention": build_attention, "experts": build_experts, "inference": build_inference,
            "hang": build_hang}
"""Screen name -> payload builder (run, request, cursor step); plugin screens use `build_plugin`."""
HANG_SCREENS = {"ranks": lambda run, req, cursor, hang: build_ranks(run, req, hang), "hang": build_hang}
"""Screens that show the hang verdict: their builders take it as a fourth argument."""


def builder(screen: str, *, hang: HangVerdict | None = None) -> Callable[..., Any]:
    """The payload builder of a screen name ("plugin:<name>" for a plugin's); the screens that show
    the hang verdict get `hang` bound."""
    if screen in HANG_SCREENS:
        return functools.partial(HANG_SCREENS[screen], hang=hang)
    return build_plugin if screen.startswith("plugin:") else BUILDERS[screen]
