"""A run recorded in inference mode, ready to draw: requests, latency, throughput, cache, experts by stage.

Pure functions over a `LiveRun` (no UI code). Rows come from the `inference_request` and
`inference_iteration` kinds and `expert_load_inference` (with its `stage` column); see
`inspector.inference` for what they mean. Latency names follow vLLM: TTFT (time to first token),
TPOT (time per output token after the first), ITL (inter-token latency), E2E.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from inspector.schema import ATTENTION_MAP
from inspector.views.downsample import DEFAULT_POINTS, downsample_indices
from inspector.views.inference_cost import SampledCost, sampled_cost
from inspector.views.live import LiveRun

REQUEST_KIND, ITERATION_KIND, EXPERT_KIND = "inference_request", "inference_iteration", "expert_load_inference"
PREFILL, DECODE = "prefill", "decode"
STAGES = (PREFILL, DECODE)

LATENCY_METRICS = {
    "time_to_first_token_s": "TTFT",
    "time_per_output_token_s": "TPOT",
    "inter_token_latency_p95_s": "ITL p95",
    "e2e_request_latency_s": "E2E",
    "queue_time_s": "queue",
}
"""Request latency columns and their short names (vLLM's)."""
PERCENTILES = (50, 90, 95, 99)


def is_inference_run(run: LiveRun) -> bool:
    """True when the run holds inference-mode iterations (or requests)."""
    return not run.frame(ITERATION_KIND).empty or not run.frame(REQUEST_KIND).empty


def requests_frame(run: LiveRun, *, rank: int = 0) -> pd.DataFrame:
    """One row per finished request of `rank`, by request id. Treat it as read-only."""
    def compute() -> pd.DataFrame:
        df = run.frame(REQUEST_KIND)
        if df.empty:
            return df
        return df[df["rank"] == rank].sort_values("request_id").reset_index(drop=True)
    return run.cached(("inference_requests", rank), (REQUEST_KIND,), compute)


def iterations_frame(run: LiveRun, *, rank: int = 0) -> pd.DataFrame:
    """One row per iteration of `rank`, by step, with `time_s` (seconds since the first iteration ended)."""
    def compute() -> pd.DataFrame:
        df = run.frame(ITERATION_KIND)
        if df.empty:
            return df
        df = df[df["rank"] == rank].sort_values("step").reset_index(drop=True)
        df = df.assign(time_s=df["wall_time"] - df["wall_time"].iloc[0] if len(df) else 0.0)
        return df
    return run.cached(("inference_iterations", rank), (ITERATION_KIND,), compute)


def latency_percentiles(requests: pd.DataFrame, qs: tuple[int, ...] = PERCENTILES) -> pd.DataFrame:
    """Per latency metric (rows, short names): count and percentiles in milliseconds (NaN: no value)."""
    rows = []
    for col, short in LATENCY_METRICS.items():
        values = requests[col].dropna().to_numpy(dtype=np.float64) * 1000.0 if col in requests else np.empty(0)
        row: dict[str, float | str | int] = {"metric": short, "n": int(values.size)}
        for q in qs:
            row[f"p{q}"] = float(np.percentile(values, q)) if values.size else float("nan")
        row["max"] = float(values.max()) if values.size else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def latency_values(requests: pd.DataFrame, metric: str) -> np.ndarray:
    """One latency column in milliseconds (finite values only), for a histogram."""
    if requests.empty or metric not in requests:
        return np.empty(0)
    v = requests[metric].to_numpy(dtype=np.float64) * 1000.0
    return v[np.isfinite(v)]


@dataclass(frozen=True)
class PhaseTotals:
    """Where the generation's time went, by stage, and the cache's peak."""

    iterations: int
    requests: int
    prompt_tokens: int
    generation_tokens: int
    prefill_s: float
    decode_s: float
    wall_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    generation_tokens_per_s: float
    peak_batch: int
    peak_kv_cache_bytes: float
    peak_kv_cache_decompressed_bytes: float
    peak_kv_cache_usage: float


def phase_totals(iterations: pd.DataFrame, requests: pd.DataFrame) -> PhaseTotals:
    """Totals over every iteration: tokens and forward seconds per stage, throughput, cache peak."""
    def total(col: str) -> float:
        return float(iterations[col].fillna(0).sum()) if col in iterations and len(iterations) else 0.0

    def peak(col: str) -> float:
        return float(iterations[col].max()) if col in iterations and iterations[col].notna().any() else float("nan")

    prefill_s, decode_s, wall_s = total("prefill_ms") / 1e3, total("decode_ms") / 1e3, total("ms") / 1e3
    prompt, gen = int(total("prompt_tokens")), int(total("generation_tokens"))
    n_req = len(requests)
    # the first token of each request comes out of its prefill: count it as generated
    first_tokens = int(requests["generation_tokens"].clip(upper=1).sum()) if n_req else 0
    return PhaseTotals(
        iterations=len(iterations), requests=n_req, prompt_tokens=prompt, generation_tokens=gen + first_tokens,
        prefill_s=prefill_s, decode_s=decode_s, wall_s=wall_s,
        prefill_tokens_per_s=prompt / prefill_s if prefill_s > 0 else float("nan"),
        decode_tokens_per_s=gen / decode_s if decode_s > 0 else float("nan"),
        generation_tokens_per_s=(gen + first_tokens) / wall_s if wall_s > 0 else float("nan"),
        peak_batch=int(peak("batch_size")) if len(iterations) else 0,
        peak_kv_cache_bytes=peak("kv_cache_bytes"),
        peak_kv_cache_decompressed_bytes=peak("kv_cache_decompressed_bytes"),
        peak_kv_cache_usage=peak("kv_cache_usage_perc"))


def throughput_series(iterations: pd.DataFrame, *, window: int = 8, max_points: int = DEFAULT_POINTS) -> pd.DataFrame:
    """Per iteration (downsampled): time, prompt and generation tokens/s over the last `window`
    iterations (tokens over their wall time), batch size, waiting requests and KV-cache usage."""
    cols = ["step", "time_s", "prompt_tokens_per_s", "generation_tokens_per_s", "batch_size",
            "num_requests_waiting", "kv_cache_usage_perc", "kv_cache_bytes", "kv_cache_decompressed_bytes"]
    if iterations.empty:
        return pd.DataFrame(columns=cols)
    secs = iterations["ms"].rolling(window, min_periods=1).sum() / 1e3
    out = pd.DataFrame({
        "step": iterations["step"], "time_s": iterations["time_s"],
        "prompt_tokens_per_s": iterations["prompt_tokens"].rolling(window, min_periods=1).sum() / secs,
        "generation_tokens_per_s": iterations["generation_tokens"].rolling(window, min_periods=1).sum() / secs,
        "batch_size": iterations["batch_size"], "num_requests_waiting": iterations["num_requests_waiting"],
        "kv_cache_usage_perc": iterations["kv_cache_usage_perc"], "kv_cache_bytes": iterations["kv_cache_bytes"],
        "kv_cache_decompressed_bytes": iterations["kv_cache_decompressed_bytes"]})
    idx = downsample_indices(out["time_s"].to_numpy(dtype=np.float64),
                             out["generation_tokens_per_s"].to_numpy(dtype=np.float64), max_points)
    return out.iloc[idx].reset_index(drop=True)


def slowest_requests(requests: pd.DataFrame, *, by: str = "e2e_request_latency_s", n: int = 20) -> pd.DataFrame:
    """The `n` requests with the largest `by`, with the columns a request table shows."""
    cols = ["request_id", "prompt_tokens", "generation_tokens", "queue_time_s", "time_to_first_token_s",
            "time_per_output_token_s", "inter_token_latency_p95_s", "e2e_request_latency_s", "finished_reason"]
    if requests.empty:
        return pd.DataFrame(columns=cols)
    return requests.sort_values(by, ascending=False, na_position="last").head(n)[cols].reset_index(drop=True)


def request_row(requests: pd.DataFrame, request_id: int) -> pd.Series | None:
    """The row of request `request_id`, or None."""
    if requests.empty:
        return None
    hit = requests[requests["request_id"] == request_id]
    return None if hit.empty else hit.iloc[0]


def _labels(texts: object, ids: object) -> list[str]:
    if texts is not None and len(texts):
        return [str(t) for t in texts]
    return [] if ids is None else [str(int(i)) for i in ids]


def request_tokens(row: pd.Series) -> tuple[list[str], int]:
    """(one label per token: the prompt's then the output's; the prompt's length). Labels are the
    tokens' texts when recorded, else their ids, else empty."""
    prompt = _labels(row.get("prompt_text"), row.get("prompt_ids"))
    output = _labels(row.get("output_text"), row.get("output_ids"))
    return prompt + output, int(row["prompt_tokens"])


def token_latencies(row: pd.Series) -> pd.DataFrame:
    """Per output token: its index, its time since arrival and its latency (first: TTFT, then the
    gap to the previous token), in milliseconds."""
    times = np.asarray(row.get("token_times_s") if row.get("token_times_s") is not None else [], dtype=np.float64)
    gaps = np.diff(np.concatenate([[0.0], times])) if times.size else times
    return pd.DataFrame({"token": np.arange(times.size), "since_arrival_ms": times * 1e3, "latency_ms": gaps * 1e3})


# ---- attention of a request's tokens -------------------------------------------------------------

def request_attention_steps(run: LiveRun, request_id: int, *, rank: int = 0) -> list[tuple[int, int, int]]:
    """(step, first query position, query count) of every iteration whose attention map shows
    `request_id` (it was batch row 0 of the iteration's first forward)."""
    it = iterations_frame(run, rank=rank)
    if it.empty or "attn_request" not in it:
        return []
    maps = set(run.attention_steps(rank))
    hit = it[(it["attn_request"] == request_id) & it["step"].isin(maps)]
    return [(int(s), int(q), int(n)) for s, q, n in zip(hit["step"], hit["attn_query_start"].fillna(0),
                                                         hit["attn_query_tokens"].fillna(1))]


def requests_with_attention(run: LiveRun, *, rank: int = 0) -> set[int]:
    """Ids of the requests some recorded attention map shows."""
    def compute() -> set[int]:
        it = iterations_frame(run, rank=rank)
        if it.empty or "attn_request" not in it:
            return set()
        hit = it[it["step"].isin(set(run.attention_steps(rank)))]["attn_request"].dropna()
        return {int(x) for x in hit}
    return run.cached(("inference_attention_requests", rank), (ITERATION_KIND, "attention_stats"), compute)


def attention_choices(run: LiveRun, request_id: int, *, rank: int = 0) -> list[tuple[int, str]]:
    """(step, label) of each recorded attention map of a request: its prefill ("prefill: 12 prompt
    tokens") or the output token that was the query ("output token 3 «e»")."""
    row = request_row(requests_frame(run, rank=rank), request_id)
    labels, prompt_len = request_tokens(row) if row is not None else ([], 0)
    out = []
    for step, q_start, q_count in request_attention_steps(run, request_id, rank=rank):
        if q_count > 1 or q_start < prompt_len:
            out.append((step, f"prefill: {max(q_start + q_count, 0)} prompt tokens (iteration {step})"))
        else:
            text = printable_token(labels[q_start]) if q_start < len(labels) else "?"
            out.append((step, f"output token {q_start - prompt_len} «{text}» (iteration {step})"))
    return out


def printable_token(text: str) -> str:
    """A token's text with control characters escaped (a newline shows as \\n)."""
    return repr(text)[1:-1]


@dataclass
class RequestAttention:
    """One head's attention of a request's queries over its own tokens (padding dropped)."""

    probs: np.ndarray          # float32 [queries, keys]
    query_positions: list[int]  # each row's token position in the request
    key_positions: list[int]    # each column's token position
    query_labels: list[str]
    key_labels: list[str]
    step: int
    layer: int
    head: int


def attention_layers_at(run: LiveRun, step: int, *, rank: int = 0) -> list[int]:
    """Layers with an attention map at exactly `step`."""
    return sorted({int(r["layer"]) for r in run.reader.blob_rows(ATTENTION_MAP.name, step=step, rank=rank)})


def attention_heads_at(run: LiveRun, step: int, layer: int, *, rank: int = 0) -> list[int]:
    """Heads stored in the map of `layer` at `step` (all of them when the map does not say)."""
    for row in run.reader.blob_rows(ATTENTION_MAP.name, step=step, rank=rank):
        if int(row["layer"]) == layer:
            if row.get("heads"):
                return [int(h) for h in row["heads"]]
            shape = row.get("shape")
            return list(range(int(shape[0]))) if isinstance(shape, list) and shape else []
    return []


def request_attention(run: LiveRun, *, request_id: int, step: int, layer: int, head: int,
                      rank: int = 0) -> RequestAttention | None:
    """The attention map of `layer`/`head` at `step` as `request_id`'s tokens attend to each other.

    The keys of a batched cache are right-aligned (shorter rows left-padded), so key column j of S
    is the request's token j − (S − seen), seen = first query position + query count; columns and
    rows before the request's first token are padding and are dropped.
    """
    found = [x for x in request_attention_steps(run, request_id, rank=rank) if x[0] == step]
    if not found or layer not in attention_layers_at(run, step, rank=rank):
        return None
    _, q_start, q_count = found[0]
    probs, meta = run.cached(("attention_map", rank, step, layer), (), lambda: run.reader.fetch(
        ATTENTION_MAP.name, step=step, rank=rank, layer=layer))
    heads = list(meta["heads"]) if meta.get("heads") else list(range(probs.shape[0]))
    if head not in heads:
        return None
    mat = np.asarray(probs[heads.index(head)], dtype=np.float32)
    stride = int(meta.get("row_stride") or 1)
    S = mat.shape[1]
    offset = S - (q_start + q_count)
    key_pos = np.arange(S) - offset
    q_pos = q_start + np.arange(mat.shape[0]) * stride
    keep_k, keep_q = key_pos >= 0, q_pos >= 0
    row = request_row(requests_frame(run, rank=rank), request_id)
    labels, _ = request_tokens(row) if row is not None else ([], 0)

    def label(i: int) -> str:
        return labels[i] if 0 <= i < len(labels) else f"#{i}"

    kp, qp = key_pos[keep_k].tolist(), q_pos[keep_q].tolist()
    return RequestAttention(probs=mat[keep_q][:, keep_k], query_positions=qp, key_positions=kp,
                            query_labels=[label(i) for i in qp], key_labels=[label(i) for i in kp],
                            step=step, layer=layer, head=head)


# ---- expert load by stage --------------------------------------------------------------------------

def expert_stage_frame(run: LiveRun, *, rank: int = 0) -> pd.DataFrame:
    """Inference expert-load rows of `rank` with a stage ("prefill" / "decode")."""
    df = run.frame(EXPERT_KIND)
    if df.empty or "stage" not in df:
        return df.iloc[0:0]
    return df[(df["rank"] == rank) & df["stage"].isin(STAGES)]


def stage_counts(run: LiveRun, *, stage: str | None = None, first: int | None = None, last: int | None = None,
                 rank: int = 0) -> tuple[list[int], list[str], np.ndarray]:
    """Tokens routed per expert summed over steps `first`…`last` (inclusive, None: open) of `stage`
    (None: both): (layers, router names, counts [layers × experts] int64), the shape an
    expert-parallel load balancer (EPLB) takes."""
    df = expert_stage_frame(run, rank=rank)
    if stage is not None:
        df = df[df["stage"] == stage]
    if first is not None:
        df = df[df["step"] >= first]
    if last is not None:
        df = df[df["step"] <= last]
    return sum_layer_counts(df)


def sum_layer_counts(df: pd.DataFrame) -> tuple[list[int], list[str], np.ndarray]:
    """Expert-load rows summed per layer: (layers, router names, counts [layers × experts] int64)."""
    if df.empty:
        return [], [], np.zeros((0, 0), dtype=np.int64)
    width = max(len(c) for c in df["counts"])
    layers: dict[int, str] = {}
    sums: dict[int, np.ndarray] = {}
    for layer, name, counts in zip(df["layer"].astype(int), df["name"], df["counts"]):
        c = np.asarray(counts, dtype=np.int64)
        acc = sums.setdefault(layer, np.zeros(width, dtype=np.int64))
        acc[:len(c)] += c
        layers.setdefault(layer, str(name))
    order = sorted(sums)
    return order, [layers[i] for i in order], np.stack([sums[i] for i in order])


def imbalance_by_stage(run: LiveRun, *, rank: int = 0) -> pd.DataFrame:
    """Per layer, for prefill and for decode over the whole run: max/mean tokens per expert
    (`prefill`, `decode`) and the hottest expert (`prefill_hot`, `decode_hot`)."""
    out: dict[str, pd.Series] = {}
    for stage in STAGES:
        layers, _, counts = stage_counts(run, stage=stage, rank=rank)
        if not layers:
            continue
        mean = counts.mean(axis=1)
        ratio = np.divide(counts.max(axis=1), mean, out=np.full(len(layers), np.nan), where=mean > 0)
        out[stage] = pd.Series(ratio, index=layers)
        out[f"{stage}_hot"] = pd.Series(counts.argmax(axis=1), index=layers)
    if not out:
        return pd.DataFrame(columns=["layer", *STAGES])
    df = pd.DataFrame(out)
    df.index.name = "layer"
    return df.reset_index()


@dataclass
class InferenceSummary:
    """What `inspector summary` says about a run recorded in inference mode."""

    latency: pd.DataFrame         # `latency_percentiles`
    totals: PhaseTotals
    imbalance: pd.DataFrame       # `imbalance_by_stage`
    slowest: pd.DataFrame         # `slowest_requests`, top 5
    finished: dict[str, int]      # finish reason -> requests
    sampled: list[SampledCost]    # what the Inspector's own sampled iterations cost (`inference_cost`)


def inference_summary(run: LiveRun, *, rank: int = 0) -> InferenceSummary | None:
    """The inference section of the post-mortem report; None for a run with no inference records."""
    if not is_inference_run(run):
        return None
    reqs, iters = requests_frame(run, rank=rank), iterations_frame(run, rank=rank)
    finished = reqs["finished_reason"].fillna("?").value_counts().to_dict() if not reqs.empty else {}
    return InferenceSummary(latency=latency_percentiles(reqs), totals=phase_totals(iters, reqs),
                            imbalance=imbalance_by_stage(run, rank=rank), slowest=slowest_requests(reqs, n=5),
                            finished={str(k): int(v) for k, v in finished.items()},
                            sampled=sampled_cost(run, iters, rank=rank))
