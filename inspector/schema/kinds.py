"""The registry of record kinds.

A kind is a named, versioned Arrow schema. Every row of every kind carries `step` (int64) and
`wall_time` (float64, seconds since the epoch); the rank is implied by the rank directory and
added as a column by the reader. Kinds whose payload is a large tensor (attention maps) are
*blob kinds*: their rows are an index into the rank's blob files (see `BLOB_INDEX_FIELDS`).

Kind ids are derived from the name (`crc32(name) & 0xFFFF`), so a plugin's kind gets a stable id
in every process without central numbering; a collision is refused at registration.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import pyarrow as pa

_COMMON = [pa.field("step", pa.int64()), pa.field("wall_time", pa.float64())]
_NAME = pa.field("name", pa.dictionary(pa.int32(), pa.string()))

BLOB_INDEX_FIELDS: list[pa.Field] = [
    pa.field("shape", pa.list_(pa.int32())),
    pa.field("dtype", pa.string()),
    pa.field("codec", pa.string()),
    pa.field("blob_file", pa.int32()),
    pa.field("offset", pa.int64()),
    pa.field("length", pa.int64()),
    pa.field("crc32", pa.uint32()),
]
"""Columns every blob kind ends with: where the tensor's bytes lie and how to check them."""


@dataclass(frozen=True)
class KindSpec:
    """One record kind: a unique name, a schema version and the Arrow schema of its rows."""

    name: str
    version: int
    fields: tuple[pa.Field, ...]
    blob: bool = False
    description: str = ""
    schema: pa.Schema = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cols = list(_COMMON) + list(self.fields) + (BLOB_INDEX_FIELDS if self.blob else [])
        meta = {"inspector.kind": self.name, "inspector.kind_version": str(self.version)}
        object.__setattr__(self, "schema", pa.schema(cols, metadata=meta))

    def __hash__(self) -> int:
        # names are unique; hashing the Arrow fields costs ~8 us, and the writer keys a dict by
        # kind for every record it writes
        return hash(self.name)

    @property
    def id(self) -> int:
        """The 16-bit id written in frame headers."""
        return kind_id(self.name)

    @property
    def column_names(self) -> list[str]:
        """All column names in schema order."""
        return self.schema.names


def kind_id(name: str) -> int:
    """Stable 16-bit id of a kind name (never 0)."""
    return (zlib.crc32(name.encode()) & 0xFFFF) or 1


_REGISTRY: dict[str, KindSpec] = {}
_BY_ID: dict[int, KindSpec] = {}


def register_kind(spec: KindSpec) -> KindSpec:
    """Add a kind to the registry; re-registering the identical spec is a no-op."""
    old = _REGISTRY.get(spec.name)
    if old is not None:
        if old.version == spec.version and old.schema.equals(spec.schema):
            return old
        raise ValueError(f"record kind {spec.name!r} is already registered with another schema")
    clash = _BY_ID.get(spec.id)
    if clash is not None:
        raise ValueError(f"record kind {spec.name!r} collides with {clash.name!r} (id {spec.id}); rename it")
    _REGISTRY[spec.name] = spec
    _BY_ID[spec.id] = spec
    return spec


def get_kind(name: str) -> KindSpec:
    """The registered kind called `name` (KeyError with the known names otherwise)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown record kind {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def kind_for_id(kid: int) -> KindSpec | None:
    """The registered kind with this id, or None."""
    return _BY_ID.get(kid)


def all_kinds() -> list[KindSpec]:
    """Every registered kind, built-in ones first."""
    return list(_REGISTRY.values())


def _f(name: str, typ: pa.DataType) -> pa.Field:
    return pa.field(name, typ)


f64, f32, i64, i32 = pa.float64(), pa.float32(), pa.int64(), pa.int32()

SCALAR = register_kind(KindSpec(
    "scalar", 1, (_NAME, _f("value", f64)),
    description="one named number per step: loss, lr, users' own metrics"))

HISTOGRAM = register_kind(KindSpec(
    "histogram", 1,
    (_NAME, _f("lo", f64), _f("hi", f64), _f("counts", pa.list_(i64)),
     _f("underflow", i64), _f("overflow", i64)),
    description="fixed equal-width bins over [lo, hi) plus out-of-range counts"))

ATTENTION_MAP = register_kind(KindSpec(
    "attention_map", 2,
    (_NAME, _f("layer", i32), _f("heads", pa.list_(i32)), _f("row_stride", i32),
     _f("tokens", pa.list_(pa.string())), _f("row_pool", i32), _f("key_pool", i32), _f("query_len", i32),
     _f("key_len", i32)),
    blob=True,
    description="attention probabilities [heads, query rows, keys] (fp16) of one layer; row_pool / key_pool > 1: "
                "each cell is the mean over a block of row_pool queries × key_pool keys of a query_len × key_len "
                "attention (version 1: row_stride > 1 meant every row_stride-th query row was kept)"))

ATTENTION_ROWS = register_kind(KindSpec(
    "attention_rows", 1,
    (_NAME, _f("layer", i32), _f("heads", pa.list_(i32)), _f("positions", pa.list_(i32))),
    blob=True,
    description="full attention rows [heads, positions, keys] (fp16) of chosen query positions of one layer, "
                "recorded beside a pooled map"))

ATTENTION_STATS = register_kind(KindSpec(
    "attention_stats", 2,
    (_NAME, _f("layer", i32), _f("head", i32), _f("entropy", f64), _f("max_weight", f64),
     _f("collapsed", pa.bool_()), _f("sink_mass", f64), _f("distance", pa.list_(f32)), _f("keys", i32),
     _f("rows", i32)),
    description="per-head statistics over every query row: mean row entropy (nats), mean max weight, a collapse "
                "flag, mean probability on the first 4 real keys (sink_mass), mean probability per query-key "
                "distance bucket (distance[0]: the same position, distance[b]: [2^(b-1), 2^b)), the most keys "
                "a row sees and the rows counted"))

GRAD_STATS = register_kind(KindSpec(
    "grad_stats", 1,
    (_NAME, _f("norm", f64), _f("mean", f64), _f("var", f64), _f("max_abs", f64),
     _f("zero_frac", f64), _f("update_ratio", f64), _f("var_over_steps", f64)),
    description="gradient statistics per parameter group; update_ratio is |Δw|/|w|"))

LAYER_TRACE = register_kind(KindSpec(
    "layer_trace", 1,
    (_NAME, _f("grad_norm", f64), _f("update_ratio", f64)),
    description="every step, per parameter group: gradient norm (before clipping) and |Δw|/|w| estimated "
                "from a fixed strided sample of each tensor (null without an optimizer step)"))

BATCH = register_kind(KindSpec(
    "batch", 1,
    (_f("micro", i32), _f("fingerprint", i64), _f("shapes", pa.string())),
    description="every training forward: a position-sensitive fingerprint of its tensor arguments "
                "(inspector.fingerprint), micro-batch index within the step, their shapes and dtypes"))

RNG_STATE = register_kind(KindSpec(
    "rng_state", 1,
    (_f("generator", pa.string()), _f("state", pa.binary())),
    description="generator states at the start of a step an anomaly was reported at (torch.cpu, "
                "torch.cuda:N raw bytes; python.random, numpy.random JSON)"))

ACTIVATION_STATS = register_kind(KindSpec(
    "activation_stats", 1,
    (_NAME, _f("mean", f64), _f("std", f64), _f("min", f64), _f("max", f64),
     _f("dead_frac", f64), _f("saturated_frac", f64), _f("nonfinite", i64)),
    description="per-module output statistics"))

_EXPERT_LOAD_FIELDS = (
    _NAME, _f("layer", i32), _f("counts", pa.list_(i64)), _f("imbalance", f64), _f("cv", f64),
    _f("router_entropy", f64), _f("dropped", i64), _f("aux_loss", f64), _f("bias", pa.list_(f32)))

EXPERT_LOAD = register_kind(KindSpec(
    "expert_load", 1, _EXPERT_LOAD_FIELDS,
    description="tokens per expert of one MoE layer in training forwards, imbalance = max/mean, cv = std/mean"))

EXPERT_LOAD_INFERENCE = register_kind(KindSpec(
    "expert_load_inference", 2, _EXPERT_LOAD_FIELDS + (_f("stage", pa.string()),),
    description="as expert_load, for inference forwards (no_grad, eval mode without a backward, "
                "Watch.phase('eval')): kept apart so training views and detectors never mix them in; "
                "stage: 'prefill' or 'decode' in a run watched in inference mode, else null"))
"""Version 2 added stage; version-1 frames read with it null."""

INFERENCE_REQUEST = register_kind(KindSpec(
    "inference_request", 1,
    (_f("request_id", i64), _f("prompt_tokens", i64), _f("generation_tokens", i64),
     _f("arrival_time", f64), _f("queue_time_s", f64), _f("time_to_first_token_s", f64),
     _f("time_per_output_token_s", f64), _f("inter_token_latency_p50_s", f64),
     _f("inter_token_latency_p95_s", f64), _f("e2e_request_latency_s", f64), _f("finished_reason", pa.string()),
     _f("token_times_s", pa.list_(f64)), _f("prompt_ids", pa.list_(i64)), _f("output_ids", pa.list_(i64)),
     _f("prompt_text", pa.list_(pa.string())), _f("output_text", pa.list_(pa.string()))),
    description="one finished generation request (names as vLLM's request metrics): seconds from arrival "
                "to its first token, mean time per output token after the first, inter-token latency "
                "percentiles, token_times_s = each output token's time since arrival; ids and per-token "
                "text only for sampled requests (else null)"))

INFERENCE_ITERATION = register_kind(KindSpec(
    "inference_iteration", 1,
    (_f("ms", f64), _f("batch_size", i64), _f("prompt_tokens", i64), _f("generation_tokens", i64),
     _f("prefill_ms", f64), _f("decode_ms", f64), _f("prefill_requests", i64),
     _f("num_requests_running", i64), _f("num_requests_waiting", i64), _f("finished_requests", i64),
     _f("kv_cache_tokens", i64), _f("kv_cache_bytes", i64), _f("kv_cache_allocated_bytes", i64),
     _f("kv_cache_decompressed_bytes", i64), _f("kv_cache_usage_perc", f64),
     _f("attn_request", i64), _f("attn_query_start", i64), _f("attn_query_tokens", i64)),
    description="one scheduler iteration (step = iteration): its wall ms, decode batch size, prompt (prefill) "
                "and generation (decode) tokens and forward ms, requests running / waiting (vLLM names), "
                "KV cache tokens and bytes (as stored, allocated, and as a decompressed per-head cache "
                "would take) and usage (fraction of the token budget, vLLM's kv_cache_usage_perc); "
                "attn_request / attn_query_start / attn_query_tokens: the request in batch row 0 of the "
                "iteration's first forward (the one an attention map of this step shows), its first "
                "query's position in that request's tokens (negative: left padding) and the query count"))

TIMING = register_kind(KindSpec(
    "timing", 1,
    (_NAME, _f("phase", pa.dictionary(pa.int32(), pa.string())), _f("ms", f64)),
    description="milliseconds per module and phase (forward/backward/optimizer/data/other/total)"))

SYSTEM = register_kind(KindSpec(
    "system", 2,
    (_f("device", pa.string()), _f("gpu_util", f64), _f("mem_used", f64), _f("mem_total", f64),
     _f("power_w", f64), _f("temp_c", f64), _f("sm_clock_mhz", f64), _f("clock_events", pa.string()),
     _f("torch_allocated", f64), _f("torch_reserved", f64), _f("torch_peak", f64), _f("cpu_percent", f64),
     _f("rss", f64)),
    description="one sample of a GPU or of the host; nulls mean N/A; memory in bytes; clock_events: why "
                "NVML says the GPU's clocks are held down (sw_power_cap, hw_thermal, sync_boost, ...; none)"))
"""Version 2 added clock_events; version-1 frames read with it null."""

ANOMALY = register_kind(KindSpec(
    "anomaly", 1,
    (_f("kind", pa.string()), _f("module", pa.string()), _f("severity", pa.string()),
     _f("value", f64), _f("message", pa.string())),
    description="something a person should look at, with the module that caused it"))
