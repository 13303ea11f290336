"""Record kinds of the run store: their names, format versions and Arrow schemas.

Everything that crosses from a probe to the store, and from the store to a UI, is one of the kinds
registered here. This package imports nothing else of ours (but `inspector.lazy_exports`), so every
layer may use it. Its names are imported on first use: `inspector.schema.run_meta` loads without
pyarrow (the TUI's first frame).
"""
from inspector.lazy_exports import lazy_getattr

_KINDS = (
    "ATTENTION_MAP",
    "ATTENTION_ROWS",
    "ATTENTION_STATS",
    "ACTIVATION_STATS",
    "ANOMALY",
    "BLOB_INDEX_FIELDS",
    "EXPERT_LOAD",
    "EXPERT_LOAD_INFERENCE",
    "GRAD_STATS",
    "INFERENCE_ITERATION",
    "INFERENCE_REQUEST",
    "HISTOGRAM",
    "SCALAR",
    "SYSTEM",
    "TIMING",
    "KindSpec",
    "all_kinds",
    "get_kind",
    "kind_for_id",
    "kind_id",
    "register_kind",
)
_EXPORTS = {**{name: ("inspector.schema.kinds", name) for name in _KINDS},
            "FORMAT_VERSION": ("inspector.schema.run_meta", "FORMAT_VERSION"),
            "RunMeta": ("inspector.schema.run_meta", "RunMeta")}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
