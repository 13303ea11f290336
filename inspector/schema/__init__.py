"""Record kinds of the run store: their names, format versions and Arrow schemas.

Everything that crosses from a probe to the store, and from the store to a UI, is one of the kinds
registered here. This package imports nothing else of ours, so every layer may use it.
"""
from inspector.schema.kinds import (
    ATTENTION_MAP,
    ATTENTION_ROWS,
    ATTENTION_STATS,
    ACTIVATION_STATS,
    ANOMALY,
    BLOB_INDEX_FIELDS,
    EXPERT_LOAD,
    EXPERT_LOAD_INFERENCE,
    GRAD_STATS,
    INFERENCE_ITERATION,
    INFERENCE_REQUEST,
    HISTOGRAM,
    SCALAR,
    SYSTEM,
    TIMING,
    KindSpec,
    all_kinds,
    get_kind,
    kind_for_id,
    kind_id,
    register_kind,
)
from inspector.schema.run_meta import FORMAT_VERSION, RunMeta

__all__ = [
    "ATTENTION_MAP",
    "ATTENTION_ROWS",
    "ATTENTION_STATS",
    "ACTIVATION_STATS",
    "ANOMALY",
    "BLOB_INDEX_FIELDS",
    "EXPERT_LOAD",
    "EXPERT_LOAD_INFERENCE",
    "INFERENCE_ITERATION",
    "INFERENCE_REQUEST",
    "FORMAT_VERSION",
    "GRAD_STATS",
    "HISTOGRAM",
    "SCALAR",
    "SYSTEM",
    "TIMING",
    "KindSpec",
    "RunMeta",
    "all_kinds",
    "get_kind",
    "kind_for_id",
    "kind_id",
    "register_kind",
]
