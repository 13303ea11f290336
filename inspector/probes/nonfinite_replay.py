"""Finding the first non-finite module inside a block by running the block once more.

The anomalies probe hooks only a model's blocks and the modules outside them: a forward hook on
every inner module would put every module on torch's slow call path, every step, for an event
that almost never happens. When a block's output turns out non-finite, the block is run again on
the inputs it was called with, under `torch.no_grad()`, with a temporary hook on every module
inside it; the first one (in the order modules finish, inner before outer) whose output is
non-finite is the answer. The rerun leaves no trace: it runs on copies of the inputs and of the
buffers (BatchNorm's running statistics), module attributes are put back, the Inspector's own
hooks are set aside (the user's stay, so a fault a hook injects happens again), and the global
CPU random state is forked. Outputs and inputs may be tensors or any structure of them (tuples,
namedtuples, dicts, `ModelOutput`s, dataclasses: see `tensor_tree`); every floating-point tensor
in an output is checked, not only the first.
"""
from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from inspector.probes.tensor_tree import floating_tensors, map_tensors

log = logging.getLogger("inspector")

_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def nonfinite_witness(t: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor that is NaN or Inf when `t` holds one: its sum (fp32, float64 for float64 `t`,
    so a float64 value beyond fp32's range is not taken for an Inf). One reduction, no sync."""
    return t.detach().sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)


def is_nonfinite(t: torch.Tensor) -> bool:
    """Does `t` hold a NaN or an Inf? (one reduction, then a host read: CPU tensors only)"""
    return not bool(torch.isfinite(nonfinite_witness(t)))


def any_nonfinite(out: Any) -> bool:
    """Does any floating-point tensor in a module output hold a NaN or an Inf? (CPU only)"""
    return any(is_nonfinite(t) for t in floating_tensors(out))


@contextlib.contextmanager
def hooks_set_aside(root: nn.Module, hook_ids: set[int]) -> Iterator[None]:
    """Take the hooks whose ids are in `hook_ids` off `root` and its submodules; put them back after."""
    saved: list[tuple[OrderedDict, OrderedDict]] = []
    for module in root.modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if hooks and any(k in hook_ids for k in hooks):
                saved.append((hooks, OrderedDict(hooks)))
                for key in [k for k in hooks if k in hook_ids]:
                    del hooks[key]
    try:
        yield
    finally:
        for hooks, original in saved:
            hooks.clear()
            hooks.update(original)


@contextlib.contextmanager
def module_state_kept(root: nn.Module) -> Iterator[None]:
    """Run with every buffer of `root` swapped for a copy, and every module attribute put back after.

    The original buffers are never written to, so BatchNorm's running statistics keep their values
    and the version counters autograd checks in backward; an attribute a forward sets (a cached aux
    loss, a counter) is bound again to what it was. Objects mutated in place are not restored.
    """
    saved: list[tuple[nn.Module, dict[str, Any], dict[str, Any]]] = []
    for module in root.modules():
        saved.append((module, dict(module.__dict__), dict(module._buffers)))
        for key, buf in module._buffers.items():
            if buf is not None:
                module._buffers[key] = buf.detach().clone()
    try:
        yield
    finally:
        for module, attrs, buffers in saved:
            module._buffers.clear()
            module._buffers.update(buffers)
            for key in [k for k in module.__dict__ if k not in attrs]:
                del module.__dict__[key]
            module.__dict__.update(attrs)


def first_nonfinite_inside(block: nn.Module, block_name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                           hook_ids: set[int]) -> str | None:
    """Run `block(*args, **kwargs)` again and return the first module whose output is non-finite.

    Names are qualified with `block_name` (the block itself is `block_name`). None when the rerun
    produced only finite outputs (a fault that does not repeat) or raised.
    """
    names = {m: f"{block_name}.{n}" if n else block_name for n, m in block.named_modules()}
    found: list[str] = []

    def check(module: nn.Module, _args: Any, out: Any) -> None:
        if not found and any_nonfinite(out):
            found.append(names[module])

    handles = []
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(hooks_set_aside(block, hook_ids))
            stack.enter_context(module_state_kept(block))
            stack.enter_context(torch.random.fork_rng(devices=[]))
            stack.enter_context(torch.no_grad())
            handles = [m.register_forward_hook(check) for m in names]
            args, kwargs = map_tensors(lambda t: t.detach().clone(), (args, kwargs))
            block(*args, **kwargs)
    except Exception as exc:  # a block that cannot be rerun must not stop training
        log.debug("inspector: rerunning %s to place a non-finite value failed: %s", block_name, exc)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None
