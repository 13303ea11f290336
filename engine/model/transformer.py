"""The decoder: embedding, ``n_layers`` pre-norm blocks (MLA + dense MLP or DeepSeekMoE), head."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from inspector_engine.config import ModelConfig
from inspector_engine.model.attention import MLA, attention_mask
from inspector_engine.model.cache import KVCache
from inspector_engine.model.mlp import MLP
from inspector_engine.model.moe import MoE
from inspector_engine.model.norm import RMSNorm
from inspector_engine.model.rope import RotaryEmbedding
from inspector_engine.model.router import Router, recomputation


class Block(nn.Module):
    """``x + attn(norm(x))`` then ``x + ffn(norm(x))``; ``ffn`` is dense for the first layers."""

    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = MLA(cfg, layer_id)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn: nn.Module = MLP(cfg.dim, cfg.inter_dim) if layer_id < cfg.n_dense_layers else MoE(cfg)

    def forward(
        self,
        x_BTD: torch.Tensor,
        cos_BTR: torch.Tensor,
        sin_BTR: torch.Tensor,
        mask: torch.Tensor | None = None,
        key_mask_BS: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """One residual block."""
        x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD), cos_BTR, sin_BTR, mask, key_mask_BS, cache)
        return x_BTD + self.ffn(self.ffn_norm(x_BTD))


def _checkpoint_contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    return contextlib.nullcontext(), recomputation()


class Transformer(nn.Module):
    """DeepSeek-V2/V3-style causal language model returning logits ``[B, T, vocab]``.

    Set ``activation_checkpointing = True`` to recompute each block in backward (training only).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.rope = RotaryEmbedding(cfg.qk_rope_head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.activation_checkpointing = False
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-style init: N(0, init_std); residual output projections scaled by 1/sqrt(2 L)."""
        std = self.cfg.init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scale = 1.0 / math.sqrt(2 * self.cfg.n_layers) if name.endswith((".wo", ".w2")) else 1.0
                nn.init.normal_(module.weight, std=std * scale)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, Router):
                nn.init.normal_(module.weight, std=std)
                module.bias.zero_()

    def forward(self, tokens_BT: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits for ``tokens[B, T]``; with ``cache``, the tokens continue the cached sequences."""
        B, T = tokens_BT.shape
        if cache is None:
            positions = torch.arange(T, device=tokens_BT.device).unsqueeze(0)
            key_mask_BS = None
            S = T
        else:
            positions = cache.positions(T)
            key_mask_BS = cache.key_mask(T)
            S = cache.length + T
        cos_BTR, sin_BTR = self.rope(positions)
        mask = attention_mask(T, S, self.cfg.window, key_mask_BS, tokens_BT.device)
        x_BTD = self.embed(tokens_BT)
        ckpt = self.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for layer in self.layers:
            if ckpt:
                x_BTD = checkpoint(layer, x_BTD, cos_BTR, sin_BTR, mask, None, None,
                                   use_reentrant=False, context_fn=_checkpoint_contexts)
            else:
                x_BTD = layer(x_BTD, cos_BTR, sin_BTR, mask, key_mask_BS, cache)
        if cache is not None:
            cache.advance(T)
        return self.head(self.norm(x_BTD))

    def routers(self) -> list[Router]:
        """Routers of the MoE layers, in layer order."""
        return [m for m in self.modules() if isinstance(m, Router)]

    def aux_loss(self) -> torch.Tensor:
        """Sum of the routers' latest balance losses (zero when none was computed)."""
        losses = [r.aux_loss for r in self.routers() if r.aux_loss is not None]
        return torch.stack(losses).sum() if losses else self.head.weight.new_zeros(())

    def set_attn_impl(self, impl: str) -> None:
        """Switch cached decoding between ``"decompress"`` and ``"absorb"``."""
        self.cfg = self.cfg.replace(attn_impl=impl)
        for layer in self.layers:
            layer.attn.attn_impl = impl

    def num_parameters(self, active: bool = False, include_embedding: bool = True) -> int:
        """Parameter count; ``active`` counts only ``top_k`` of the routed experts per MoE layer."""
        total = sum(p.numel() for p in self.parameters())
        if not include_embedding:
            total -= self.embed.weight.numel()
        if active:
            for layer in self.layers:
                if isinstance(layer.ffn, MoE):
                    per_expert = sum(p.numel() for p in layer.ffn.experts[0].parameters())
                    total -= per_expert * (self.cfg.n_routed_experts - self.cfg.n_activated_experts)
        return total
