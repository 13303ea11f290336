"""Top-k expert router for DeepSeekMoE, in both DeepSeek-V2 and DeepSeek-V3 modes.

* ``score_func="softmax"`` (V2): affinities ``s = softmax(x W^T)``; experts chosen by top-k of
  ``s``; weights are the chosen ``s`` (renormalised iff ``norm_topk_prob``) times ``route_scale``;
  expert-level balance loss ``alpha * sum_i f_i P_i``.
* ``score_func="sigmoid"`` (V3): affinities ``s = sigmoid(x W^T)``; experts chosen by top-k of
  ``s + bias`` where ``bias`` is used for selection only; weights are the chosen ``s``
  renormalised to sum to one, times ``route_scale``. ``bias`` is nudged by ``-/+gamma`` after every
  optimizer step (``balance_update``) toward balanced load (auxiliary-loss-free balancing), and a
  small sequence-wise balance loss on the normalised affinities is added.
* Optional group-limited routing (``n_groups > 1``): only experts of the ``topk_groups`` best
  groups are eligible (group score: max affinity for V2, sum of top-2 biased affinities for V3).

The balance loss is computed per sequence (``f_i = E / (K T) * #tokens choosing i``,
``P_i = mean_t s'_{i,t}``) and averaged over sequences, as in V3's sequence-wise loss and the
Hugging Face DeepSeek-V2 ``seq_aux`` implementation.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_RECOMPUTING: contextvars.ContextVar[bool] = contextvars.ContextVar("engine_recomputing", default=False)


@contextlib.contextmanager
def recomputation() -> Iterator[None]:
    """Mark an activation-checkpoint recompute: routers then skip their statistics side effects."""
    token = _RECOMPUTING.set(True)
    try:
        yield
    finally:
        _RECOMPUTING.reset(token)


class Router(nn.Module):
    """Scores tokens against experts and picks the top-k.

    ``forward(x_ND, seq_len=None) -> (scores_NE, weights_NK, indices_NK)``: ``scores`` are the
    post-softmax / post-sigmoid affinities for all experts (fp32), ``weights`` the normalised and
    scaled top-k weights (dtype of ``x``), ``indices`` int64 expert ids. This mirrors the
    ``(router_logits, top_k_weights, top_k_index)`` triple of Hugging Face MoE routers.

    Readable state: ``n_experts``, ``top_k``, ``score_func``, buffer ``bias`` (V3 selection bias;
    stays zero in softmax mode), buffer ``tokens_per_expert`` (float counts of the most recent
    forward), ``aux_loss`` (latest balance-loss tensor in training, else ``None``) and
    ``load_since_update`` (counts accumulated over training forwards since the last
    ``balance_update``).
    """

    def __init__(
        self,
        dim: int,
        n_experts: int,
        top_k: int,
        score_func: str = "softmax",
        route_scale: float = 1.0,
        norm_topk_prob: bool = False,
        n_groups: int = 1,
        topk_groups: int = 1,
        aux_loss_alpha: float = 0.0,
    ) -> None:
        super().__init__()
        if score_func not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown score_func {score_func!r}")
        self.dim = dim
        self.n_experts = n_experts
        self.top_k = top_k
        self.score_func = score_func
        self.route_scale = route_scale
        self.norm_topk_prob = norm_topk_prob or score_func == "sigmoid"
        self.n_groups = n_groups
        self.topk_groups = topk_groups
        self.aux_loss_alpha = aux_loss_alpha
        self.weight = nn.Parameter(torch.empty(n_experts, dim))
        nn.init.normal_(self.weight, std=0.02)
        self.register_buffer("bias", torch.zeros(n_experts))
        self.register_buffer("tokens_per_expert", torch.zeros(n_experts), persistent=False)
        self.register_buffer("load_since_update", torch.zeros(n_experts), persistent=False)
        self.aux_loss: torch.Tensor | None = None

    def forward(
        self, x_ND: torch.Tensor, seq_len: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Route ``N`` tokens; ``seq_len`` groups them into sequences for the balance loss."""
        with torch.autocast(x_ND.device.type, enabled=False):  # routing in fp32 even under autocast
            logits_NE = F.linear(x_ND.float(), self.weight.float())
        scores_NE = logits_NE.softmax(dim=-1) if self.score_func == "softmax" else logits_NE.sigmoid()
        select_NE = scores_NE + self.bias if self.score_func == "sigmoid" else scores_NE
        if self.n_groups > 1:
            select_NE = self._limit_groups(select_NE)
        indices_NK = select_NE.topk(self.top_k, dim=-1).indices
        weights_NK = scores_NE.gather(1, indices_NK)
        if self.norm_topk_prob:
            weights_NK = weights_NK / (weights_NK.sum(dim=-1, keepdim=True) + 1e-20)
        weights_NK = (weights_NK * self.route_scale).to(x_ND.dtype)

        aux = None
        if self.training and self.aux_loss_alpha > 0 and torch.is_grad_enabled():
            aux = self._balance_loss(scores_NE, indices_NK, seq_len or x_ND.shape[0])
        if not _RECOMPUTING.get():
            counts_E = torch.bincount(indices_NK.flatten(), minlength=self.n_experts)
            self.tokens_per_expert.copy_(counts_E)
            if self.training:
                self.load_since_update.add_(counts_E)
            self.aux_loss = aux
        return scores_NE, weights_NK, indices_NK

    def _limit_groups(self, select_NE: torch.Tensor) -> torch.Tensor:
        """Mask (to -inf) experts outside each token's ``topk_groups`` best groups."""
        n = select_NE.shape[0]
        grouped_NGe = select_NE.view(n, self.n_groups, -1)
        if self.score_func == "softmax":
            group_scores_NG = grouped_NGe.amax(dim=-1)
        else:
            group_scores_NG = grouped_NGe.topk(min(2, grouped_NGe.shape[-1]), dim=-1).values.sum(-1)
        keep_NG = group_scores_NG.topk(self.topk_groups, dim=-1).indices
        drop_NG = torch.ones_like(group_scores_NG, dtype=torch.bool).scatter_(1, keep_NG, False)
        return grouped_NGe.masked_fill(drop_NG.unsqueeze(-1), float("-inf")).flatten(1)

    def _balance_loss(self, scores_NE: torch.Tensor, indices_NK: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Sequence-wise ``alpha * sum_i f_i P_i`` averaged over the sequences in the batch."""
        n, k, e = scores_NE.shape[0], self.top_k, self.n_experts
        if n % seq_len:
            raise ValueError(f"{n} tokens do not split into sequences of {seq_len}")
        b = n // seq_len
        probs_NE = scores_NE if self.score_func == "softmax" else scores_NE / scores_NE.sum(-1, keepdim=True)
        hits_BE = torch.zeros(b, e, device=scores_NE.device, dtype=scores_NE.dtype)
        hits_BE.scatter_add_(1, indices_NK.view(b, seq_len * k), scores_NE.new_ones(b, seq_len * k))
        f_BE = hits_BE * (e / (k * seq_len))
        p_BE = probs_NE.view(b, seq_len, e).mean(dim=1)
        return (f_BE * p_BE).sum(dim=1).mean() * self.aux_loss_alpha

    @torch.no_grad()
    def balance_update(self, gamma: float, load_E: torch.Tensor | None = None) -> None:
        """V3 auxiliary-loss-free update: ``bias_i += gamma * sign(mean_load - load_i)``.

        ``load_E`` defaults to ``load_since_update`` (pass a globally all-reduced copy under data
        parallelism). Clears ``load_since_update``. A no-op in softmax mode or when ``gamma == 0``.
        """
        load = self.load_since_update if load_E is None else load_E.to(self.bias.device)
        if self.score_func == "sigmoid" and gamma > 0 and load.sum() > 0:
            load = load.float()
            self.bias.add_(gamma * torch.sign(load.mean() - load))
        self.load_since_update.zero_()

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, n_experts={self.n_experts}, top_k={self.top_k}, "
            f"score_func={self.score_func}, route_scale={self.route_scale}, groups={self.n_groups}/{self.topk_groups}"
        )
