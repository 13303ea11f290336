"""Multi-head Latent Attention (MLA), DeepSeek-V2/V3.

Keys and values are compressed into one ``kv_lora_rank`` latent per token (plus a single rope key
shared by all heads); only these are cached. Per head, ``q = [q_nope, rope(q_rope)]`` and
``k = [W_uk c, rope(k_rope)]``, ``v = W_uv c`` with ``c = kv_norm(W_dkv x)``; softmax scale
``(qk_nope_head_dim + qk_rope_head_dim) ** -0.5``.

Two equivalent paths:

* ``decompress`` (always used without a cache, default with one): up-project the cached latents
  to per-head keys/values and run scaled-dot-product attention. The ``QKCapture`` tap sits here.
* ``absorb`` (cached decoding with ``attn_impl="absorb"``): fold ``W_uk`` into the query and
  ``W_uv`` into the output, so attention runs directly against the cached latents. The
  ``LatentQKCapture`` tap sits here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inspector_engine.config import ModelConfig
from inspector_engine.model.cache import KVCache
from inspector_engine.model.hooks import LatentQKCapture, QKCapture
from inspector_engine.model.norm import RMSNorm
from inspector_engine.model.rope import apply_rope


def attention_mask(
    T: int, S: int, window: int | None, key_mask_BS: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    """Boolean visibility mask ``[B or 1, 1, T, S]`` (True = attend) for queries at the last ``T``
    of ``S`` key columns; ``None`` when plain causal attention (or no mask at all) suffices."""
    if key_mask_BS is None and window is None and (T == 1 or T == S):
        return None
    q_col_T1 = torch.arange(S - T, S, device=device).unsqueeze(1)
    k_col_1S = torch.arange(S, device=device).unsqueeze(0)
    allowed_TS = k_col_1S <= q_col_T1
    if window is not None:
        allowed_TS = allowed_TS & (q_col_T1 - k_col_1S < window)
    allowed = allowed_TS[None, None]
    if key_mask_BS is not None:
        allowed = allowed & key_mask_BS[:, None, None, :]
    return allowed


class MLA(nn.Module):
    """Multi-head latent attention with optional query low-rank compression and causal/local mask."""

    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.dim = cfg.dim
        self.n_heads = cfg.n_heads
        self.q_lora_rank = cfg.q_lora_rank
        self.kv_lora_rank = cfg.kv_lora_rank
        self.qk_nope_head_dim = cfg.qk_nope_head_dim
        self.qk_rope_head_dim = cfg.qk_rope_head_dim
        self.qk_head_dim = cfg.qk_head_dim
        self.v_head_dim = cfg.v_head_dim
        self.window = cfg.window
        self.attn_impl = cfg.attn_impl
        if self.q_lora_rank > 0:
            self.wq_a = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
            self.wq_b = nn.Linear(cfg.q_lora_rank, cfg.n_heads * self.qk_head_dim, bias=False)
        else:
            self.wq = nn.Linear(cfg.dim, cfg.n_heads * self.qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(cfg.dim, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)
        self.kv_norm = RMSNorm(cfg.kv_lora_rank, cfg.norm_eps)
        self.wkv_b = nn.Linear(cfg.kv_lora_rank, cfg.n_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.v_head_dim, cfg.dim, bias=False)
        self.softmax_scale = self.qk_head_dim ** -0.5
        self.qk_capture = QKCapture(self.softmax_scale, causal=True, window=cfg.window)
        self.latent_qk_capture = LatentQKCapture(self.softmax_scale, causal=True, window=cfg.window)

    def forward(
        self,
        x_BTD: torch.Tensor,
        cos_BTR: torch.Tensor,
        sin_BTR: torch.Tensor,
        mask: torch.Tensor | None = None,
        key_mask_BS: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Attend ``x[B, T, D]`` over itself (and the cached prefix); returns ``[B, T, D]``.

        ``mask`` comes from `attention_mask` (``None`` = causal); ``key_mask_BS`` marks real
        (non-padding) key columns and is only passed on to the ``QKCapture`` tap.
        """
        B, T, _ = x_BTD.shape
        q = self.wq(x_BTD) if self.q_lora_rank == 0 else self.wq_b(self.q_norm(self.wq_a(x_BTD)))
        q_nope_BTHN, q_rope_BTHR = q.view(B, T, self.n_heads, self.qk_head_dim).split(
            [self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1
        )
        q_rope_BTHR = apply_rope(q_rope_BTHR, cos_BTR, sin_BTR)
        latent_BTC, k_rope_BTR = self.wkv_a(x_BTD).split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        latent_BTC = self.kv_norm(latent_BTC)
        k_rope_BTR = apply_rope(k_rope_BTR.unsqueeze(2), cos_BTR, sin_BTR).squeeze(2)
        if cache is not None:
            latent_BSC, k_rope_BSR = cache.update(self.layer_id, latent_BTC, k_rope_BTR)
        else:
            latent_BSC, k_rope_BSR = latent_BTC, k_rope_BTR
        if cache is not None and self.attn_impl == "absorb":
            o_BTHV = self._absorbed(q_nope_BTHN, q_rope_BTHR, latent_BSC, k_rope_BSR, mask, key_mask_BS)
        else:
            o_BTHV = self._decompressed(q_nope_BTHN, q_rope_BTHR, latent_BSC, k_rope_BSR, mask, key_mask_BS)
        return self.wo(o_BTHV.flatten(2))

    def _decompressed(
        self,
        q_nope_BTHN: torch.Tensor,
        q_rope_BTHR: torch.Tensor,
        latent_BSC: torch.Tensor,
        k_rope_BSR: torch.Tensor,
        mask: torch.Tensor | None,
        key_mask_BS: torch.Tensor | None,
    ) -> torch.Tensor:
        """Up-project latents to per-head k/v, tap q/k, run SDPA; returns ``[B, T, H, V]``."""
        B, S, _ = latent_BSC.shape
        T, H = q_nope_BTHN.shape[1], self.n_heads
        kv_BSHX = self.wkv_b(latent_BSC.to(q_nope_BTHN.dtype)).view(B, S, H, self.qk_nope_head_dim + self.v_head_dim)
        k_nope_BSHN, v_BSHV = kv_BSHX.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        k_rope_BSHR = k_rope_BSR.to(k_nope_BSHN.dtype).unsqueeze(2).expand(B, S, H, self.qk_rope_head_dim)
        q_BHTD = torch.cat([q_nope_BTHN, q_rope_BTHR.to(q_nope_BTHN.dtype)], dim=-1).transpose(1, 2)
        k_BHSD = torch.cat([k_nope_BSHN, k_rope_BSHR], dim=-1).transpose(1, 2)
        self.qk_capture.key_mask = key_mask_BS
        q_BHTD, k_BHSD = self.qk_capture(q_BHTD, k_BHSD)
        v_BHSV = v_BSHV.transpose(1, 2)
        pad = self.qk_head_dim - self.v_head_dim
        if pad > 0:  # fused SDPA kernels want equal q/k/v head dims: zero-pad v, slice the output
            v_BHSV = F.pad(v_BHSV, (0, pad))
        o_BHTV = F.scaled_dot_product_attention(
            q_BHTD, k_BHSD, v_BHSV, attn_mask=mask, is_causal=mask is None and T > 1, scale=self.softmax_scale,
        )
        return o_BHTV[..., : self.v_head_dim].transpose(1, 2)

    def _absorbed(
        self,
        q_nope_BTHN: torch.Tensor,
        q_rope_BTHR: torch.Tensor,
        latent_BSC: torch.Tensor,
        k_rope_BSR: torch.Tensor,
        mask: torch.Tensor | None,
        key_mask_BS: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weight-absorbed attention against the latents (DeepSeek-V3 ``attn_impl="absorb"``)."""
        T, S = q_nope_BTHN.shape[1], latent_BSC.shape[1]
        w_HXC = self.wkv_b.weight.view(self.n_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
        w_uk_HNC, w_uv_HVC = w_HXC[:, : self.qk_nope_head_dim], w_HXC[:, self.qk_nope_head_dim :]
        q_lat_BTHC = torch.einsum("bthn,hnc->bthc", q_nope_BTHN, w_uk_HNC.to(q_nope_BTHN.dtype))
        latent_BSC = latent_BSC.to(q_lat_BTHC.dtype)
        self.latent_qk_capture.key_mask = key_mask_BS
        q_lat_BTHC, q_rope_BTHR, latent_BSC, k_rope_BSR = self.latent_qk_capture(
            q_lat_BTHC, q_rope_BTHR, latent_BSC, k_rope_BSR)
        scores_BHTS = (
            torch.einsum("bthc,bsc->bhts", q_lat_BTHC, latent_BSC)
            + torch.einsum("bthr,bsr->bhts", q_rope_BTHR.to(q_lat_BTHC.dtype), k_rope_BSR.to(q_lat_BTHC.dtype))
        ) * self.softmax_scale
        if mask is None and T > 1:  # plain causal, and then T == S
            mask = torch.ones(T, S, dtype=torch.bool, device=scores_BHTS.device).tril()[None, None]
        if mask is not None:
            scores_BHTS = scores_BHTS.masked_fill(~mask, float("-inf"))
        probs_BHTS = scores_BHTS.softmax(dim=-1, dtype=torch.float32).to(latent_BSC.dtype)
        o_lat_BTHC = torch.einsum("bhts,bsc->bthc", probs_BHTS, latent_BSC)
        return torch.einsum("bthc,hvc->bthv", o_lat_BTHC, w_uv_HVC.to(o_lat_BTHC.dtype))
