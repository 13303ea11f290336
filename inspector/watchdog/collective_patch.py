"""Wrapping the public `torch.distributed` collectives so that every call is seen by the open
collective trackers (`inspector.watchdog.collectives`).

The wrappers are set on the `torch.distributed` module (where user code and FSDP2 find them:
FSDP2 calls `dist.all_gather_single` / `dist.reduce_scatter_single` through the module in torch
2.13, older versions `all_gather_into_tensor` / `reduce_scatter_tensor`), while at least one tracker
is installed (reference-counted), and the originals are put back when the last one uninstalls.
`torch.distributed.distributed_c10d`'s own names are left alone: helpers such as
`all_gather_object` call them internally, and counting those inner calls would make one user call
two collectives. Point-to-point ops (send/recv) are not wrapped: only two ranks of a group take
part, so they cannot share the group's sequence numbers.
"""
from __future__ import annotations

import functools
import inspect
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class OpSpec:
    """Where a collective's arguments are: the tensor(s) it sends, the group, async_op."""

    sent: str | None        # parameter holding the tensor (or list of tensors) it sends
    group_i: int            # positional index of `group`
    async_i: int | None     # positional index of `async_op` (None: always blocking)
    sent_i: int | None


SENT = {"all_reduce": "tensor", "broadcast": "tensor", "reduce": "tensor", "all_gather": "tensor",
        "all_gather_into_tensor": "input_tensor", "all_gather_single": "input_tensor",
        "reduce_scatter": "input_list", "reduce_scatter_tensor": "input", "reduce_scatter_single": "input",
        "all_to_all": "input_tensor_list", "all_to_all_single": "input", "gather": "tensor", "scatter": "tensor",
        "barrier": None}
"""The collectives wrapped (those this torch has) and the parameter holding what each sends."""


class Listener(Protocol):
    """What a wrapper calls: `begin` before the collective (a token, or None to not follow it),
    `end` after it returned (`result` is its Work for async_op, None when it raised)."""

    def begin(self, op: str, group: Any, sent: Any, is_async: bool) -> Any: ...

    def end(self, token: Any, result: Any, raised: bool) -> None: ...


_lock = threading.Lock()
_listeners: tuple[Listener, ...] = ()
_originals: dict[str, Callable[..., Any]] = {}


def _spec(fn: Callable[..., Any], sent: str | None) -> OpSpec:
    params = list(inspect.signature(fn).parameters)
    return OpSpec(sent=sent, group_i=params.index("group") if "group" in params else -1,
                  async_i=params.index("async_op") if "async_op" in params else None,
                  sent_i=params.index(sent) if sent in params else None)


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int | None, name: str | None, default: Any) -> Any:
    if name is not None and name in kwargs:
        return kwargs[name]
    if i is not None and 0 <= i < len(args):
        return args[i]
    return default


def _wrap(op: str, fn: Callable[..., Any], spec: OpSpec) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        listeners = _listeners
        if not listeners:
            return fn(*args, **kwargs)
        group = _arg(args, kwargs, spec.group_i, "group", None)
        is_async = bool(_arg(args, kwargs, spec.async_i, "async_op", False)) if spec.async_i is not None else False
        sent = _arg(args, kwargs, spec.sent_i, spec.sent, None)
        tokens = [listener.begin(op, group, sent, is_async) for listener in listeners]
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            for listener, token in zip(listeners, tokens):
                listener.end(token, None, True)
            raise
        for listener, token in zip(listeners, tokens):
            listener.end(token, result, False)
        return result

    wrapper.__inspector_original__ = fn  # type: ignore[attr-defined]
    return wrapper


def add_listener(listener: Listener) -> None:
    """Start calling `listener` from every wrapped collective (wrapping them on the first listener)."""
    global _listeners
    with _lock:
        if listener in _listeners:
            return
        if not _listeners:
            for op, sent in SENT.items():
                fn = getattr(dist, op, None)
                if fn is None or hasattr(fn, "__inspector_original__"):
                    continue
                _originals[op] = fn
                setattr(dist, op, _wrap(op, fn, _spec(fn, sent)))
        _listeners = (*_listeners, listener)


def remove_listener(listener: Listener) -> None:
    """Stop calling `listener`; the last one removed puts the original functions back."""
    global _listeners
    with _lock:
        _listeners = tuple(x for x in _listeners if x is not listener)
        if _listeners:
            return
        for op, fn in _originals.items():
            current = getattr(dist, op, None)
            if getattr(current, "__inspector_original__", None) is fn:
                setattr(dist, op, fn)
        _originals.clear()


def original(op: str) -> Callable[..., Any]:
    """The unwrapped `torch.distributed.<op>` (whether or not it is wrapped now)."""
    fn = _originals.get(op) or getattr(dist, op)
    return getattr(fn, "__inspector_original__", fn)


def tensors_of(sent: Any) -> list[torch.Tensor]:
    """The tensors of a collective's sent argument (a tensor, or a list of them)."""
    if isinstance(sent, torch.Tensor):
        return [sent]
    if isinstance(sent, (list, tuple)):
        return [t for t in sent if isinstance(t, torch.Tensor)]
    return []
