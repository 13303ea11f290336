"""SwiGLU feed-forward block, used for dense layers, shared experts and routed experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """``w2(silu(w1 x) * w3 x)`` with bias-free projections (DeepSeek's ``MLP`` / ``Expert``)."""

    def __init__(self, dim: int, inter_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, inter_dim, bias=False)
        self.w2 = nn.Linear(inter_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, inter_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the gated feed-forward to ``x[..., dim]``."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
