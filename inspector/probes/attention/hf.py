"""Attention adapter for Hugging Face transformers models (checked with transformers 5.25).

Models that dispatch attention through `AttentionInterface` call
`ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)` on
every forward and then call the function it returns. While at least one watch is open, this adapter
wraps that lookup (`AttentionInterface.get_interface`, and `__getitem__` for the few models that
index the interface directly): the function handed back is a thin wrapper around the very function
transformers chose, which calls it with exactly the arguments it was given, returns exactly its
result and then, for a module of a watched model on a sampled call, hands the post-rope query, the
key (fewer heads under grouped-query attention), the mask and the scale to the probe.

Nothing about the model changes: `config._attn_implementation` keeps its name, so every check a
model makes on that name (`== "eager"` in GPT-2's `reorder_and_upcast_attn` path, `output_attentions`
validation, `"flash" in name`, mask selection) sees what it saw unwatched, and the outputs are
bit-identical (tests/test_hf_zoo.py runs every architecture of the installed transformers). Watches
on the same or different models compose: each registers its model's modules with its own sink, and
the lookup is restored when the last one closes, in any order.
transformers is imported only when the model (or a module inside it) looks like one of its models.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import torch
from torch import nn

from inspector.probes.attention.stats import Visibility
from inspector.probes.attention.sink import AttentionSink

log = logging.getLogger("inspector")

_ARG_NAMES = ("module", "query", "key", "value", "attention_mask", "dropout", "scaling")
"""The positional order of transformers' attention functions (`sdpa_attention_forward`, eager, flash)."""

_MAX_WRAPPERS = 1024
_lock = threading.Lock()
_sinks: dict[nn.Module, tuple[AttentionSink, ...]] = {}
"""Watched module -> the sinks of the watches that hold it (usually one)."""
_handles: set["HFAttentionHandle"] = set()
_patch: "_LookupPatch | None" = None


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
    """One watch's registration of a model's modules; `remove()` ends it (the last one restores
    transformers' attention lookup)."""

    def __init__(self, modules: list[nn.Module], sink: AttentionSink) -> None:
        self.modules = modules
        self.sink = sink

    def remove(self) -> None:
        """Forget this watch's modules; unpatch the lookup when no watch is left. Idempotent."""
        global _patch
        with _lock:
            if self not in _handles:
                return
            _handles.discard(self)
            for module in self.modules:
                left = tuple(s for s in _sinks.get(module, ()) if s is not self.sink)
                if left:
                    _sinks[module] = left
                else:
                    _sinks.pop(module, None)
            self.modules = []
            if not _handles and _patch is not None:
                _patch.uninstall()
                _patch = None


def attach_hf(model: nn.Module, sink: AttentionSink) -> HFAttentionHandle | str:
    """Record the model's attention through transformers' attention lookup; a reason string when it cannot."""
    global _patch
    hf = hf_model(model)
    if hf is None:
        return "not a Hugging Face transformers model"
    can_set = getattr(type(hf), "_can_set_attn_implementation", None)
    if callable(can_set) and not can_set():
        return (f"{type(hf).__name__} does not dispatch attention through transformers' AttentionInterface, "
                "so its attention cannot be observed without changing the model")
    if not attention_modules(model):
        return f"{type(hf).__name__} is a Hugging Face model without attention modules"
    modules = list(model.modules())
    handle = HFAttentionHandle(modules, sink)
    with _lock:
        if _patch is None:
            _patch = _LookupPatch()
            _patch.install()
        for module in modules:
            _sinks[module] = _sinks.get(module, ()) + (sink,)
        _handles.add(handle)
    return handle


class _LookupPatch:
    """`AttentionInterface.get_interface` and `__getitem__` replaced by versions that wrap what the
    originals return; `uninstall()` puts the originals back (unless someone replaced ours since)."""

    _NAMES = ("get_interface", "__getitem__")

    def __init__(self) -> None:
        from transformers import AttentionInterface

        self.cls = AttentionInterface
        self.own = {name: AttentionInterface.__dict__.get(name) for name in self._NAMES}
        self.ours: dict[str, Callable] = {}
        self.wrappers: dict[tuple[Callable, str | None], Callable] = {}

    def install(self) -> None:
        """Put the wrapping lookups on the class."""
        get_interface = self.cls.get_interface
        getitem = self.cls.__getitem__
        wrap = self.wrap

        def inspector_get_interface(iface: Any, attn_implementation: str, default: Callable) -> Callable:
            return wrap(get_interface(iface, attn_implementation, default), attn_implementation)

        def inspector_getitem(iface: Any, key: str) -> Callable:
            return wrap(getitem(iface, key), key)

        self.ours = {"get_interface": inspector_get_interface, "__getitem__": inspector_getitem}
        for name, fn in self.ours.items():
            setattr(self.cls, name, fn)

    def uninstall(self) -> None:
        """Restore the class's own lookups."""
        for name, fn in self.ours.items():
            if self.cls.__dict__.get(name) is not fn:
                continue  # replaced after us: leave theirs (our wrappers pass through once no one watches)
            if self.own[name] is None:
                delattr(self.cls, name)
            else:
                setattr(self.cls, name, self.own[name])
        self.wrappers.clear()

    def wrap(self, fn: Any, impl: str | None) -> Any:
        """The recording wrapper around attention function `fn` chosen under the name `impl`."""
        if not callable(fn) or getattr(fn, "_inspector_wrapped", False):
            return fn
        if torch.compiler.is_compiling():  # traced: reading the cache would guard the graph on its contents
            return _wrapper(fn, impl or "eager")
        try:
            return self.wrappers[(fn, impl)]
        except KeyError:
            if len(self.wrappers) >= _MAX_WRAPPERS:  # a model passing a new callable on every call
                self.wrappers.clear()
            wrapper = self.wrappers[(fn, impl)] = _wrapper(fn, impl or "eager")
            return wrapper
        except TypeError:  # an unhashable callable
            return _wrapper(fn, impl or "eager")


def _wrapper(fn: Callable, impl: str) -> Callable:
    """Call `fn` unchanged; then hand the inputs of a watched module's call to its sinks."""

    def inspector_attention(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        module = args[0] if args else kwargs.get("module")
        sinks = _sinks.get(module) if isinstance(module, nn.Module) else None
        if sinks and torch.compiler.is_compiling():
            for sink in sinks:
                sink.traced()
        elif sinks:
            _capture_all(sinks, impl, module, args, kwargs)
        return out

    inspector_attention._inspector_wrapped = True  # type: ignore[attr-defined]
    inspector_attention.__wrapped__ = fn  # type: ignore[attr-defined]
    return inspector_attention


def _capture_all(sinks: tuple[AttentionSink, ...], impl: str, module: nn.Module, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
    """Bind the call's arguments by transformers' positional order and capture for each sink."""
    named = dict(kwargs)
    named.update(zip(_ARG_NAMES, args))
    query, key, mask = named.get("query"), named.get("key"), named.get("attention_mask")
    for sink in sinks:
        _capture(sink, impl, module, query, key, mask, named)


def _capture(sink: AttentionSink, original: str, module: nn.Module, query: torch.Tensor, key: torch.Tensor,
             attention_mask: Any, kwargs: dict[str, Any]) -> None:
    if sink.idle():
        return
    name = type(module).__name__
    try:
        name, layer = sink.layer_of(module, getattr(module, "layer_idx", None))
        if not sink.wants(name, layer):
            return
        scale = kwargs.get("scaling")
        scale = float(query.shape[-1] ** -0.5 if scale is None else scale)
        row = sink.batch_row(query.shape[0])
        vis = hf_visibility(original, module, query.shape[2], key.shape[2], attention_mask, kwargs, row)
        sink.capture(name, layer, query[row], key[_row(key, row)], scale, vis)
    except Exception as exc:  # a recording problem must never stop the model
        sink.failed(name, exc)


def _row(t: torch.Tensor, row: int) -> int:
    """`row`, or 0 for a tensor broadcast over the batch (leading size 1)."""
    return row if t.shape[0] > row else 0


def hf_visibility(original: str, module: nn.Module, T: int, S: int, attention_mask: Any,
                  kwargs: dict[str, Any], row: int = 0) -> Visibility:
    """Batch row `row`'s visibility as the `original` implementation applies the mask.

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
        vis.bias_HTS = position_bias[_row(position_bias, row)]
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
        mask_HTS = attention_mask[_row(attention_mask, row)]
        if mask_HTS.dtype == torch.bool:
            vis.allowed_HTS = mask_HTS
        else:
            vis.bias_HTS = mask_HTS if vis.bias_HTS is None else vis.bias_HTS + mask_HTS
        return vis
    if attention_mask.dim() == 2:  # flash: real keys; shorter than S under a static cache (empty slots after)
        real_S = attention_mask[_row(attention_mask, row), -S:].bool()
        n = real_S.shape[0]
        if n < S:
            real_S = torch.cat([real_S, real_S.new_zeros(S - n)])
        vis.key_mask_S = real_S
        vis.causal, vis.q_offset = is_causal, n - T
        return vis
    raise ValueError(f"attention mask of shape {tuple(attention_mask.shape)} is not supported")
