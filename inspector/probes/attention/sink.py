"""What an attention adapter (engine QKCapture, Hugging Face, nn.MultiheadAttention) hands its
captured queries and keys to: the attention probe, seen through this small interface."""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from inspector.probes.attention.stats import Visibility


BATCH_ROW_KEY = "attention_batch_row"
"""`ProbeContext.shared` key: the batch row whose attention the next forward records (default 0).
An inference-mode watch sets it per forward so the recorded request rotates over the batch."""


INFERENCE_MODE_KEY = "inference_mode"
"""`ProbeContext.shared` key, True under an inference-mode watch: maps and statistics are recorded,
heads are not judged for collapse."""


class AttentionSink(Protocol):
    """The probe side of an adapter's hook: naming, sampling decisions and the capture itself."""

    def layer_of(self, module: nn.Module, hint: int | None = None) -> tuple[str, int]:
        """The module's qualified name and its layer index (`hint` when the model states it)."""
        ...

    def idle(self) -> bool:
        """True when nothing is recorded at the current step (the hooks' first, cheapest check)."""
        ...

    def wants(self, name: str, layer: int) -> bool:
        """True when this module's attention is to be recorded now (cheap; call before any work)."""
        ...

    def batch_row(self, batch: int) -> int:
        """The batch row to record from a batch of `batch` sequences (0 unless told otherwise)."""
        ...

    def capture(self, name: str, layer: int, q_HTD: torch.Tensor, k_GSD: torch.Tensor, scale: float,
                vis: Visibility, *, owned: bool = False) -> None:
        """Recompute, reduce and record the attention of one sequence (batch row `batch_row`);
        `owned`: the adapter made `q_HTD` and `k_GSD` itself (nothing else writes to their memory)."""
        ...

    def traced(self) -> None:
        """The hook runs inside a torch.compile trace: nothing is captured there (said once)."""
        ...

    def failed(self, where: str, exc: BaseException) -> None:
        """A capture went wrong: warn once per `where`, never raise into the model."""
        ...
