"""Instrumentation tap points: plain identity modules that forward hooks can read.

Engine-agnostic tools (the Inspector) find these by class name / duck typing and register
ordinary ``register_forward_hook`` callbacks; nothing here knows about any such tool.
"""

from __future__ import annotations

import torch
from torch import nn


class QKCapture(nn.Module):
    """Identity tap on the full per-head queries and keys of one attention layer.

    Called inside every MLA module (attribute ``qk_capture``) as
    ``q_BHTD, k_BHSD = self.qk_capture(q_BHTD, k_BHSD)`` and returns its inputs unchanged.

    * ``q_BHTD``: ``[batch, heads, T, qk_nope_head_dim + qk_rope_head_dim]`` queries after rope,
      no-rope and rope parts concatenated in that order.
    * ``k_BHSD``: ``[batch, heads, S, same]`` keys after rope; MLA's single shared rope key is
      broadcast to every head. ``S`` counts every key the queries attend over, KV cache included.
    * Query offset: the queries are the LAST ``T`` of the ``S`` key positions, i.e. query row ``t``
      sits at key column ``q_offset + t`` with ``q_offset = S - T`` (``0`` without a cache, when
      ``S == T``; ``S - 1`` for a single decoded token).
    * Visibility: key column ``s`` is visible to query ``t`` iff
      ``(not causal or s <= q_offset + t)`` and ``(window is None or q_offset + t - s < window)``
      and ``(key_mask is None or key_mask[b, s])``.
    * ``key_mask``: ``None`` or bool ``[batch, S]``, False on left-padding columns that the batching
      scheduler inserts to right-align sequences of different lengths; set before each call.

    With ``v`` from the same layer, ``softmax(q @ k^T * softmax_scale + mask) @ v`` reproduces the
    per-head attention output (before the output projection ``wo``). Not called on the
    weight-absorbed decode path (``attn_impl="absorb"``), which never materialises per-head keys:
    `LatentQKCapture` is its tap.
    With activation checkpointing, hooks fire a second time when backward recomputes the block.
    """

    def __init__(self, softmax_scale: float, causal: bool = True, window: int | None = None) -> None:
        super().__init__()
        self.softmax_scale: float = float(softmax_scale)
        self.causal: bool = causal
        self.window: int | None = window
        self.key_mask: torch.Tensor | None = None

    def forward(self, q_BHTD: torch.Tensor, k_BHSD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(q, k)`` unchanged (the point is the forward hook)."""
        return q_BHTD, k_BHSD

    def extra_repr(self) -> str:
        return f"softmax_scale={self.softmax_scale:.4g}, causal={self.causal}, window={self.window}"


class LatentQKCapture(nn.Module):
    """Identity tap on the weight-absorbed decode path (``attn_impl="absorb"``) of one MLA layer.

    Called inside every MLA module (attribute ``latent_qk_capture``) as
    ``q_lat_BTHC, q_rope_BTHR, latent_BSC, k_rope_BSR = self.latent_qk_capture(...)`` and returns its
    inputs unchanged:

    * ``q_lat_BTHC``: ``[batch, T, heads, kv_lora_rank]`` no-rope queries with ``W_uk`` folded in;
    * ``q_rope_BTHR``: ``[batch, T, heads, qk_rope_head_dim]`` rope queries;
    * ``latent_BSC``: ``[batch, S, kv_lora_rank]`` cached latents, shared by every head;
    * ``k_rope_BSR``: ``[batch, S, qk_rope_head_dim]`` cached rope keys, shared by every head.

    The attention scores are ``(q_lat · latentᵀ + q_rope · k_ropeᵀ) * softmax_scale``: the same
    numbers the decompressed path's ``QKCapture`` sees, so ``q = [q_lat, q_rope]`` per head and
    ``k = [latent, k_rope]`` (broadcast to every head) give the same attention through the same rules
    (query offset ``S - T``, ``causal``, ``window``, ``key_mask`` as documented on `QKCapture`).
    """

    def __init__(self, softmax_scale: float, causal: bool = True, window: int | None = None) -> None:
        super().__init__()
        self.softmax_scale: float = float(softmax_scale)
        self.causal: bool = causal
        self.window: int | None = window
        self.key_mask: torch.Tensor | None = None

    def forward(self, q_lat_BTHC: torch.Tensor, q_rope_BTHR: torch.Tensor, latent_BSC: torch.Tensor,
                k_rope_BSR: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the inputs unchanged (the point is the forward hook)."""
        return q_lat_BTHC, q_rope_BTHR, latent_BSC, k_rope_BSR

    def extra_repr(self) -> str:
        return f"softmax_scale={self.softmax_scale:.4g}, causal={self.causal}, window={self.window}"
