"""Model configuration dataclass and the named-config registry (`get_config`).

Field names follow DeepSeek-V3's `inference/model.py` `ModelArgs`. The named configs keep
DeepSeek-V2-Lite's proportions, scaled down: per-head dims ``qk_nope = v = dim / n_heads``,
``qk_rope = qk_nope / 2``, ``kv_lora_rank = dim / 4``, ``q_lora_rank = 0``, the first layer dense,
shared + fine-grained routed SwiGLU experts with ``moe_inter_dim`` well below ``dim``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

SCORE_FUNCS = ("softmax", "sigmoid")
ATTN_IMPLS = ("decompress", "absorb")


@dataclass
class ModelConfig:
    """Shapes and routing hyper-parameters of a DeepSeek-V2/V3-style decoder.

    Routing modes: ``score_func="softmax"`` is DeepSeek-V2 (softmax affinities, expert-level
    auxiliary balance loss with weight ``aux_loss_alpha``, optional top-k renormalisation via
    ``norm_topk_prob``). ``score_func="sigmoid"`` is DeepSeek-V3 (sigmoid affinities, top-k weights
    always renormalised, auxiliary-loss-free balancing through a selection-only bias updated by
    ``bias_update_gamma`` after every optimizer step, plus a small sequence-wise balance loss with
    weight ``aux_loss_alpha``).
    """

    vocab_size: int = 256
    dim: int = 64
    n_layers: int = 2
    n_dense_layers: int = 1
    n_heads: int = 4
    inter_dim: int = 192
    moe_inter_dim: int = 32
    # MoE routing
    n_routed_experts: int = 8
    n_shared_experts: int = 2
    n_activated_experts: int = 2
    n_expert_groups: int = 1
    n_limited_groups: int = 1
    score_func: str = "softmax"
    route_scale: float = 1.0
    norm_topk_prob: bool = False
    aux_loss_alpha: float = 0.001
    bias_update_gamma: float = 0.0
    # Multi-head latent attention
    q_lora_rank: int = 0
    kv_lora_rank: int = 16
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    window: int | None = None
    attn_impl: str = "decompress"
    # positions, norms, init
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self) -> None:
        """Validate field combinations early, with readable messages."""
        if self.score_func not in SCORE_FUNCS:
            raise ValueError(f"score_func must be one of {SCORE_FUNCS}, got {self.score_func!r}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        if self.qk_rope_head_dim % 2:
            raise ValueError("qk_rope_head_dim must be even (rope rotates pairs)")
        if not 0 <= self.n_dense_layers <= self.n_layers:
            raise ValueError("n_dense_layers must lie in [0, n_layers]")
        if self.n_routed_experts % self.n_expert_groups:
            raise ValueError("n_routed_experts must be divisible by n_expert_groups")
        if not 1 <= self.n_limited_groups <= self.n_expert_groups:
            raise ValueError("n_limited_groups must lie in [1, n_expert_groups]")
        experts_reachable = self.n_limited_groups * (self.n_routed_experts // self.n_expert_groups)
        if not 1 <= self.n_activated_experts <= experts_reachable:
            raise ValueError("n_activated_experts must lie in [1, experts in the limited groups]")
        if self.window is not None and self.window < 1:
            raise ValueError("window must be None or >= 1")

    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width: the no-rope part plus the decoupled rope part."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_cache_width(self) -> int:
        """Elements cached per token per layer by MLA: the normed latent plus the shared rope key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (safe for `torch.load(weights_only=True)` checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict`; unknown keys are rejected."""
        return cls(**d)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


_REGISTRY: dict[str, Callable[[], ModelConfig]] = {}


def register_config(name: str) -> Callable[[Callable[[], ModelConfig]], Callable[[], ModelConfig]]:
    """Decorator adding a zero-argument config factory to the registry under ``name``."""

    def deco(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
        _REGISTRY[name] = fn
        return fn

    return deco


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A fresh copy of the named config, with optional field overrides."""
    try:
        cfg = _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown config {name!r}; known: {list_configs()}") from None
    return cfg.replace(**overrides) if overrides else cfg


def list_configs() -> list[str]:
    """Names of all registered configs."""
    return sorted(_REGISTRY)


@register_config("debug")
def _debug() -> ModelConfig:
    """Under 1M parameters, two layers (one dense, one MoE): for tests, forward in milliseconds."""
    return ModelConfig(
        dim=64, n_layers=2, n_dense_layers=1, n_heads=4, inter_dim=192, moe_inter_dim=32,
        n_routed_experts=8, n_shared_experts=2, n_activated_experts=2,
        kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        max_seq_len=256, score_func="softmax", aux_loss_alpha=0.001,
    )


@register_config("debug_v3")
def _debug_v3() -> ModelConfig:
    """``debug`` shapes with DeepSeek-V3 routing (sigmoid, aux-loss-free bias, 2 of 4 groups)."""
    return _debug().replace(
        score_func="sigmoid", aux_loss_alpha=0.0001, bias_update_gamma=0.01,
        n_expert_groups=4, n_limited_groups=2,
    )


@register_config("tiny")
def _tiny() -> ModelConfig:
    """The demo: V3-style sigmoid routing with aux-loss-free balancing; trains on 2 CPU cores."""
    return ModelConfig(
        dim=128, n_layers=4, n_dense_layers=1, n_heads=8, inter_dim=384, moe_inter_dim=64,
        n_routed_experts=16, n_shared_experts=2, n_activated_experts=4,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        max_seq_len=2048, score_func="sigmoid", route_scale=1.0,
        aux_loss_alpha=0.0001, bias_update_gamma=0.01,
    )


@register_config("small")
def _small() -> ModelConfig:
    """For a GPU: 12 layers, 64 routed experts (top-6) in 8 groups with group-limited routing."""
    return ModelConfig(
        dim=768, n_layers=12, n_dense_layers=1, n_heads=12, inter_dim=2048, moe_inter_dim=256,
        n_routed_experts=64, n_shared_experts=2, n_activated_experts=6,
        n_expert_groups=8, n_limited_groups=3,
        kv_lora_rank=192, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
        max_seq_len=4096, score_func="sigmoid", route_scale=1.0,
        aux_loss_alpha=0.0001, bias_update_gamma=0.001,
    )
