"""Attention adapter for Hugging Face transformers models (checked with transformers 5.23).

Models that dispatch attention through `AttentionInterface` read `config._attn_implementation`
on every call. For each implementation in use (sdpa, eager, flash…) this registers a wrapping
function under a new name `inspector<N>_<original>` (the original's name stays a substring, so
transformers' `"flash" in name` / `"sdpa" in name` checks still hold), registers the original's
mask function under that name too (otherwise transformers builds no mask for an unknown name),
and points every config of the model at it. The wrapper calls the model's own function with
the same arguments, so outputs are unchanged; on sampled calls it also hands the post-rope query,
the key (fewer heads under grouped-query attention), the mask and the scale to the probe.

The config is switched directly rather than with `model.set_attn_implementation(name)`: that
method re-validates the name and, for a name containing "flash", tries to load a flash kernel
of that name. `remove()` puts every config back and unregisters the names.
transformers is imported only when the model (or a module inside it) looks like one of its models.
"""
from __future__ import annotations

import itertools
import logging
import sys
from typing import Any, Callable

import torch
from torch import nn

from inspector.probes.attention_math import Visibility
from inspector.probes.attention_sink import AttentionSink

log = logging.getLogger("inspector")
_TAGS = itertools.count()


def hf_model(model: nn.Module) -> nn.Module | None:
    """The outermost module whose config carries a transformers attention implementation: the
    model itself, or the one inside a wrapper (DDP, PEFT, a user's module holding a backbone)."""
    for module in model.modules():
        if hasattr(getattr(module, "config", None), "_attn_implementation"):
            return module
    return None


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Modules that look like transformers attention layers (class name with "Attention" and a config)."""
    return [m for m in model.modules() if "Attention" in type(m).__name__ and hasattr(m, "config")]


class HFAttentionHandle:
    """The wrapper names registered and the configs switched to them; `remove()` undoes both."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.switched: list[tuple[Any, str, str]] = []

    def remove(self) -> None:
        """Restore each config's original implementation and unregister the wrapper names."""
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        for config, original, name in self.switched:
            if getattr(config, "_attn_implementation_internal", None) == name:
                config._attn_implementation_internal = original
        self.switched.clear()
        for name in self.names:
            AttentionInterface._global_mapping.pop(name, None)
            AttentionMaskInterface._global_mapping.pop(name, None)
        self.names.clear()


def attach_hf(model: nn.Module, sink: AttentionSink) -> HFAttentionHandle | str:
    """Route the model's attention through a recording wrapper; a reason string when it cannot."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    hf = hf_model(model)
    if hf is None:
        return "not a Hugging Face transformers model"
    can_set = getattr(type(hf), "_can_set_attn_implementation", None)
    if callable(can_set) and not can_set():
        return (f"{type(hf).__name__} does not dispatch attention through transformers' AttentionInterface, "
                "so its attention cannot be observed without changing the model")
    modules = attention_modules(model)
    if not modules:
        return f"{type(hf).__name__} is a Hugging Face model without attention modules"
    tag = next(_TAGS)
    handle = HFAttentionHandle()
    wrappers: dict[str, str] = {}
    for config in _configs(model):
        original = getattr(config, "_attn_implementation", None)
        if not isinstance(original, str):
            continue
        if original == "eager" and not _eager_resolvable(modules, config):
            log.info("inspector: attention: no eager_attention_forward beside %s's attention; left as is",
                     type(hf).__name__)
            continue
        name = wrappers.get(original)
        if name is None:
            name = wrappers[original] = f"inspector{tag}_{original}"
            AttentionInterface.register(name, _wrapper(original, sink))
            if original in ALL_MASK_ATTENTION_FUNCTIONS:
                AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
            handle.names.append(name)
        config._attn_implementation_internal = name
        handle.switched.append((config, original, name))
    if not handle.switched:
        handle.remove()
        return f"{type(hf).__name__}: no attention implementation the probe can wrap"
    return handle


def _configs(model: nn.Module) -> list[Any]:
    """Every distinct config of the model's modules and their sub-configs (by identity)."""
    seen: dict[int, Any] = {}
    todo = [getattr(m, "config", None) for m in model.modules()]
    while todo:
        config = todo.pop()
        if config is None or id(config) in seen or not hasattr(config, "_attn_implementation_internal"):
            continue
        seen[id(config)] = config
        todo.extend(getattr(config, key, None) for key in getattr(config, "sub_configs", {}) or {})
    return list(seen.values())


def _eager_resolvable(modules: list[nn.Module], config: Any) -> bool:
    return all(_module_namespace(m).get("eager_attention_forward") is not None
               for m in modules if m.config is config)


def _module_namespace(module: nn.Module) -> dict[str, Any]:
    mod = sys.modules.get(type(module).__module__)
    return vars(mod) if mod is not None else {}


def _resolve(module: nn.Module, original: str) -> Callable:
    """The function the module would have called under `original` (its own file's eager function,
    or its file's attention interface, which may override the global one)."""
    space = _module_namespace(module)
    if original == "eager":
        fn = space.get("eager_attention_forward")
        if fn is None:
            raise RuntimeError(f"no eager_attention_forward for {type(module).__name__}")
        return fn
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    iface = space.get("ALL_ATTENTION_FUNCTIONS", ALL_ATTENTION_FUNCTIONS)
    try:
        return iface[original]
    except KeyError:
        return ALL_ATTENTION_FUNCTIONS[original]


def _wrapper(original: str, sink: AttentionSink) -> Callable:
    """The attention function registered in place of `original`."""
    resolved: dict[type, Callable] = {}
    flash = "flash" in original

    def inspector_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: Any, *args: Any, **kwargs: Any) -> Any:
        fn = resolved.get(type(module))
        if fn is None:
            fn = resolved[type(module)] = _resolve(module, original)
        if flash:  # flash_attention_forward picks its kernel by the config's name
            config = module.config
            current = config._attn_implementation_internal
            config._attn_implementation_internal = original
            try:
                out = fn(module, query, key, value, attention_mask, *args, **kwargs)
            finally:
                config._attn_implementation_internal = current
        else:
            out = fn(module, query, key, value, attention_mask, *args, **kwargs)
        _capture(sink, original, module, query, key, attention_mask, kwargs)
        return out

    return inspector_attention


def _capture(sink: AttentionSink, original: str, module: nn.Module, query: torch.Tensor, key: torch.Tensor,
             attention_mask: Any, kwargs: dict[str, Any]) -> None:
    name = type(module).__name__
    try:
        name, layer = sink.layer_of(module, getattr(module, "layer_idx", None))
        if not sink.wants(name, layer):
            return
        scale = kwargs.get("scaling")
        scale = float(query.shape[-1] ** -0.5 if scale is None else scale)
        vis = hf_visibility(original, module, query.shape[2], key.shape[2], attention_mask, kwargs)
        sink.capture(name, layer, query[0], key[0], scale, vis)
    except Exception as exc:  # a recording problem must never stop the model
        sink.failed(name, exc)


def hf_visibility(original: str, module: nn.Module, T: int, S: int, attention_mask: Any,
                  kwargs: dict[str, Any]) -> Visibility:
    """Batch element 0's visibility as the `original` implementation applies the mask.

    A 4-D mask is complete (bool: True = attend; float: additive); a `position_bias` is added to
    the scores. With no mask, sdpa is causal
    with top-left alignment when the module is causal and T > 1, eager attends everywhere, and
    flash is causal aligned bottom-right. A 2-D mask (flash) marks real keys. Flash alone applies
    `sliding_window` from the call; sdpa and eager have it in the mask already.
    """
    is_causal = kwargs.get("is_causal")
    is_causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    flash = "flash" in original
    vis = Visibility(softcap=kwargs.get("softcap"), sinks_H=kwargs.get("s_aux"))
    position_bias = kwargs.get("position_bias")  # T5-style relative bias [B or 1, H, T, S], added to the scores
    if isinstance(position_bias, torch.Tensor):
        vis.bias_HTS = position_bias[0]
    if flash:
        window = kwargs.get("sliding_window")
        vis.window = int(window) if isinstance(window, int) and window > 0 else None
    if attention_mask is None:
        if flash:
            vis.causal, vis.q_offset = is_causal, S - T
        elif not original.endswith("eager"):
            vis.causal = is_causal and T > 1
        return vis
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention mask of type {type(attention_mask).__name__} is not supported")
    if attention_mask.dim() == 4:
        mask_HTS = attention_mask[0]
        if mask_HTS.dtype == torch.bool:
            vis.allowed_HTS = mask_HTS
        else:
            vis.bias_HTS = mask_HTS if vis.bias_HTS is None else vis.bias_HTS + mask_HTS
        return vis
    if attention_mask.dim() == 2:  # flash: real keys; shorter than S under a static cache (empty slots after)
        real_S = attention_mask[0, -S:].bool()
        n = real_S.shape[0]
        if n < S:
            real_S = torch.cat([real_S, real_S.new_zeros(S - n)])
        vis.key_mask_S = real_S
        vis.causal, vis.q_offset = is_causal, n - T
        return vis
    raise ValueError(f"attention mask of shape {tuple(attention_mask.shape)} is not supported")
