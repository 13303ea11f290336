"""DeepSeekMoE layer: always-on shared experts plus fine-grained routed experts (all SwiGLU)."""

from __future__ import annotations

import torch
from torch import nn

from inspector_engine.config import ModelConfig
from inspector_engine.model.mlp import MLP
from inspector_engine.model.router import Router


class MoE(nn.Module):
    """``y = sum_{i in topk(x)} w_i * expert_i(x) + shared(x)``.

    The ``n_shared_experts`` shared experts are fused into one MLP of width
    ``n_shared_experts * moe_inter_dim`` (as in DeepSeek's reference code). Routed experts are an
    ``nn.ModuleList`` so each one is a separately hookable module.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_routed_experts = cfg.n_routed_experts
        self.router = Router(
            cfg.dim, cfg.n_routed_experts, cfg.n_activated_experts,
            score_func=cfg.score_func, route_scale=cfg.route_scale, norm_topk_prob=cfg.norm_topk_prob,
            n_groups=cfg.n_expert_groups, topk_groups=cfg.n_limited_groups, aux_loss_alpha=cfg.aux_loss_alpha,
        )
        self.experts = nn.ModuleList(MLP(cfg.dim, cfg.moe_inter_dim) for _ in range(cfg.n_routed_experts))
        self.shared_experts = (
            MLP(cfg.dim, cfg.n_shared_experts * cfg.moe_inter_dim) if cfg.n_shared_experts > 0 else None
        )

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """Route every token of ``x[B, T, D]`` to its top-k experts and add the shared experts."""
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)
        _, weights_NK, indices_NK = self.router(x_ND, seq_len=T)
        y_ND = self._routed(x_ND, weights_NK, indices_NK)
        if self.shared_experts is not None:
            y_ND = y_ND + self.shared_experts(x_ND)
        return y_ND.view(B, T, D)

    def _routed(self, x_ND: torch.Tensor, weights_NK: torch.Tensor, indices_NK: torch.Tensor) -> torch.Tensor:
        """Sort (token, slot) pairs by expert, run each expert once on its tokens, scatter back."""
        N, K = indices_NK.shape
        flat_idx_M = indices_NK.flatten()
        order_M = flat_idx_M.argsort(stable=True)
        token_M = order_M // K
        counts = torch.bincount(flat_idx_M, minlength=self.n_routed_experts).tolist()
        x_MD = x_ND[token_M]
        # Under autograd every expert runs, even on zero tokens, so all expert weights take part in
        # the graph (their gradient is then exactly zero) and DDP needs no unused-parameter search.
        run_empty = torch.is_grad_enabled()
        outs: list[torch.Tensor] = []
        start = 0
        for e, n in enumerate(counts):
            if n or run_empty:
                outs.append(self.experts[e](x_MD[start:start + n]))
            start += n
        y_MD = torch.cat(outs) * weights_NK.flatten()[order_M].unsqueeze(1).to(outs[0].dtype)
        # un-sort back to (token, slot) order and sum the K slots: deterministic, no scatter-add
        y_unsorted_MD = torch.empty_like(y_MD)
        y_unsorted_MD[order_M] = y_MD
        return y_unsorted_MD.view(N, K, -1).sum(dim=1)
