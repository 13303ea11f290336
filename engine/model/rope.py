"""Rotary position embeddings for MLA's decoupled rope part.

Uses the interleaved-pair convention of DeepSeek's reference code (``view_as_complex`` on
adjacent pairs ``(x[2i], x[2i+1])``), written with real cos/sin so it also runs under autocast.
Only the ``qk_rope_head_dim`` slice of queries and the single shared rope key are rotated.
"""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables ``[max_seq_len, head_dim / 2]`` indexed by token position."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError("rope head_dim must be even")
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        inv_freq_R2 = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles_PR2 = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq_R2)
        self.register_buffer("cos", angles_PR2.cos().float(), persistent=False)
        self.register_buffer("sin", angles_PR2.sin().float(), persistent=False)

    def forward(self, positions_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin ``[B, T, head_dim/2]`` for integer positions ``[B, T]`` (or ``[1, T]``)."""
        if positions_BT.numel() and int(positions_BT.max()) >= self.max_seq_len:
            raise ValueError(
                f"position {int(positions_BT.max())} exceeds max_seq_len={self.max_seq_len}"
            )
        return self.cos[positions_BT], self.sin[positions_BT]


def apply_rope(x_BTHR: torch.Tensor, cos_BTR2: torch.Tensor, sin_BTR2: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of ``x[B, T, H, R]`` by the per-position angles (computed in fp32)."""
    dtype = x_BTHR.dtype
    x = x_BTHR.float().unflatten(-1, (-1, 2))
    x0, x1 = x[..., 0], x[..., 1]
    cos, sin = cos_BTR2.unsqueeze(2), sin_BTR2.unsqueeze(2)
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(dtype)
