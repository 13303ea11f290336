"""The phases expert load is recorded in, their record kinds, and the keys an inference-mode watch
shares with the experts probe."""
from __future__ import annotations

from typing import Any

TRAIN, INFERENCE = "train", "inference"
PREFILL, DECODE = "prefill", "decode"
KIND_OF_PHASE = {TRAIN: "expert_load", INFERENCE: "expert_load_inference",
                 PREFILL: "expert_load_inference", DECODE: "expert_load_inference"}
"""The record kind of each phase; prefill and decode are inference rows with their `stage` set."""
STAGE_KEY = "inference_stage"
"""`ProbeContext.shared` key: "prefill" or "decode" while an inference-mode watch runs such a forward."""
FORWARD_END_KEY = "forward_end_listeners"
"""`ProbeContext.shared` key: callables an inference-mode watch calls with the stage after each
forward of the model (before the stage is cleared)."""
LOAD_BUFFER = "tokens_per_expert"
"""The engine router's buffer holding its last forward's tokens per expert."""


def fresh_sums() -> dict[str, dict[str, Any]]:
    """Empty per-router sums for every phase."""
    return {phase: {} for phase in KIND_OF_PHASE}
