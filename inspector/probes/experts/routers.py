"""MoE routers found by duck typing, and how to read their output (see the package docstring)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from inspector.probes.model_map import layer_index

LOAD_BUFFER = "tokens_per_expert"
"""The engine router's buffer holding its last forward's tokens per expert."""

_EXPERT_ATTRS = ("n_experts", "num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOPK_ATTRS = ("top_k", "num_experts_per_tok", "moe_top_k", "n_activated_experts")
_CAPACITY_ATTRS = ("capacity", "expert_capacity", "capacity_factor")
_ROUTER_CLASS = re.compile(r"Router$")


@dataclass
class RouterInfo:
    """A router found in the model and how to read its output."""

    name: str
    module: nn.Module
    n_experts: int
    top_k: int | None
    scores: str            # "probs", "sigmoid", "logits" or "sigmoid_logits": what the score tensor is
    engine: bool           # our engine's Router (scores first, `aux_loss`, `bias` in sigmoid mode)
    capacity: bool         # a capacity limit applies (dropped tokens unknown)
    indices_at: int | None = None  # where in the router's output tuple the expert ids were found
    indices_dtype: torch.dtype | None = None  # their dtype there (the hook's one-look check)

    @property
    def layer(self) -> int | None:
        """Layer index from the module name."""
        return layer_index(self.name)

    def bias(self) -> torch.Tensor | None:
        """The balance bias as it is now, or None."""
        if self.engine:
            b = getattr(self.module, "bias", None) if getattr(self.module, "score_func", "") == "sigmoid" else None
        else:
            b = getattr(self.module, "e_score_correction_bias", None)
        return b if isinstance(b, torch.Tensor) and b.numel() == self.n_experts else None


def find_routers(model: nn.Module) -> list[RouterInfo]:
    """Every MoE router of `model` (outermost match only), in module order."""
    config = _text_config(model)
    parents = {id(child): mod for mod in model.modules() for child in mod.children()}
    found: list[RouterInfo] = []
    for name, mod in model.named_modules():
        if not name or any(name.startswith(f"{r.name}.") for r in found):
            continue
        info = _router_info(name, mod, parents.get(id(mod)), config)
        if info is not None:
            found.append(info)
    return found


EXACT_COUNT_DTYPES = (torch.float32, torch.float64, torch.int32, torch.int64)
"""Buffer dtypes that hold a forward's token counts exactly (float32: up to 2^24). A model cast to
bfloat16 casts its buffers too, and a bfloat16 count above 256 is rounded (1,646 for 1,644)."""


def load_keeping(routers: list[RouterInfo]) -> list[RouterInfo]:
    """The engine routers that keep their last forward's tokens per expert in a buffer
    (`LOAD_BUFFER`, [E], of an `EXACT_COUNT_DTYPES` dtype), when all of them have the same number
    of experts on one device (so one stack reads them all); [] otherwise (their hooks count the ids)."""
    buffers = {r.name: r.module._buffers.get(LOAD_BUFFER) for r in routers if r.engine}
    keeping = [r for r in routers if isinstance(buffers.get(r.name), torch.Tensor)
               and buffers[r.name].shape == (r.n_experts,) and buffers[r.name].dtype in EXACT_COUNT_DTYPES]
    alike = {(r.n_experts, buffers[r.name].device, buffers[r.name].dtype) for r in keeping}
    return keeping if len(alike) == 1 else []


def _router_info(name: str, mod: nn.Module, parent: nn.Module | None, config: Any) -> RouterInfo | None:
    cls = type(mod).__name__
    if cls == "Router" and hasattr(mod, "n_experts") and hasattr(mod, "top_k"):
        scores = "sigmoid" if getattr(mod, "score_func", "softmax") == "sigmoid" else "probs"
        return RouterInfo(name, mod, int(mod.n_experts), int(mod.top_k), scores, True, False)
    leaf = name.rsplit(".", 1)[-1]
    is_gate = leaf in ("gate", "router") and parent is not None and hasattr(parent, "experts")
    if not (_ROUTER_CLASS.search(cls) or is_gate):
        return None
    n_experts = _first_int((mod, parent, config), _EXPERT_ATTRS) or _experts_from_shapes(mod, parent)
    if n_experts is None or n_experts < 2:
        return None
    top_k = _first_int((mod, parent, config), _TOPK_ATTRS)
    sigmoid = hasattr(mod, "e_score_correction_bias") or getattr(config, "scoring_func", None) == "sigmoid"
    capacity = any(_positive(getattr(o, a, None)) for o in (mod, parent, config) for a in _CAPACITY_ATTRS)
    return RouterInfo(name, mod, n_experts, top_k, "sigmoid_logits" if sigmoid else "logits", False, capacity)


def _text_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            return get_text()
        except Exception:
            return config
    return config


def _first_int(objs: tuple[Any, ...], attrs: tuple[str, ...]) -> int | None:
    for obj in objs:
        if obj is None:
            continue
        for a in attrs:
            v = getattr(obj, a, None)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    return None


def _experts_from_shapes(mod: nn.Module, parent: nn.Module | None) -> int | None:
    """Expert count from the parent's `experts` list, else the router's [E, D] weight."""
    experts = getattr(parent, "experts", None)
    if isinstance(experts, (nn.ModuleList, nn.Sequential)):
        return len(experts)
    weight = getattr(mod, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def router_indices(out: Any, info: RouterInfo) -> torch.Tensor | None:
    """indices_NK of a router's output: the integer tensor at the position seen before, else parsed."""
    at = info.indices_at
    if at is not None and isinstance(out, tuple) and len(out) > at:
        t = out[at]
        if isinstance(t, torch.Tensor) and not t.is_floating_point() and t.dtype != torch.bool and t.dim() >= 1:
            return t
    indices_NK = parse_router_output(out, info)[1]
    if isinstance(out, tuple):
        info.indices_at = next((i for i, t in enumerate(out) if t is indices_NK or (
            isinstance(t, torch.Tensor) and indices_NK is not None and t.data_ptr() == indices_NK.data_ptr()
            and not t.is_floating_point())), None)
        info.indices_dtype = indices_NK.dtype if info.indices_at is not None and indices_NK is not None else None
    return indices_NK


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def parse_router_output(out: Any, info: RouterInfo) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(scores_NE, indices_NK) from a router's output; indices computed by top-k when absent."""
    tensors = [out] if isinstance(out, torch.Tensor) else \
        [t for t in out if isinstance(t, torch.Tensor)] if isinstance(out, (tuple, list)) else []
    e = info.n_experts
    indices = next((t for t in tensors if not t.is_floating_point() and t.dtype != torch.bool and t.dim() >= 1), None)
    floats = [t for t in tensors if t.is_floating_point() and t.dim() >= 1 and t.shape[-1] == e]
    scores = (floats[0] if indices is not None else floats[-1]) if floats else None
    scores_NE = None if scores is None else scores.detach().reshape(-1, e)
    if indices is not None:
        return scores_NE, indices.detach().reshape(-1, indices.shape[-1])
    if scores_NE is None or not info.top_k:
        return scores_NE, None
    return scores_NE, scores_NE.topk(min(info.top_k, e), dim=-1).indices


def token_entropy_sum(scores_NE: torch.Tensor, kind: str) -> torch.Tensor:
    """Sum over tokens of the entropy (nats) of each token's normalised score distribution."""
    x_NE = scores_NE.float()
    if kind in ("logits",):
        logp_NE = torch.log_softmax(x_NE, dim=-1)
        return -(logp_NE.exp() * logp_NE).sum()
    if kind == "sigmoid_logits":
        x_NE = torch.sigmoid(x_NE)
    if kind in ("sigmoid", "sigmoid_logits"):
        x_NE = x_NE / x_NE.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    return torch.special.entr(x_NE).sum()
