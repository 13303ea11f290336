"""Tensors inside structured module outputs and inputs.

Models return more than tensors: tuples and lists (namedtuples too), dicts and other mappings
(Hugging Face `ModelOutput`), and dataclasses (`@dataclass class Out: logits; loss`). These
helpers walk all of them, depth first in field order, to a bounded depth (a cyclic or very deep
object is cut off, never an error). Anything else (a KV-cache object, a string) is a leaf that
holds no tensor.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping
from itertools import islice
from typing import Any

import torch

MAX_DEPTH = 8
MAX_TENSORS = 16


def _is_dataclass_instance(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _children(obj: Any) -> Collection[Any]:
    """The direct members of a container, in order; nothing for a leaf."""
    if isinstance(obj, (str, bytes, torch.Tensor)):
        return ()
    if isinstance(obj, Mapping):
        return obj.values()
    if isinstance(obj, (tuple, list)):
        return obj
    if _is_dataclass_instance(obj):
        return [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
    return ()


def iter_tensors(obj: Any, depth: int = MAX_DEPTH) -> Iterator[torch.Tensor]:
    """Every tensor in `obj` once, depth first, containers nested at most `depth` deep (a container
    met again, as in a cycle, is skipped)."""
    yield from _walk(obj, depth, set())


def _walk(obj: Any, depth: int, seen: set[int]) -> Iterator[torch.Tensor]:
    if id(obj) in seen:
        return
    if isinstance(obj, torch.Tensor):
        seen.add(id(obj))
        yield obj
        return
    if depth <= 0:
        return
    children = _children(obj)
    if children:
        seen.add(id(obj))
    for child in children:
        yield from _walk(child, depth - 1, seen)


def floating_tensors(obj: Any, limit: int = MAX_TENSORS) -> list[torch.Tensor]:
    """The first `limit` floating-point tensors in `obj`."""
    if isinstance(obj, torch.Tensor):  # the usual module output, on the hot path: no walk
        return [obj] if obj.is_floating_point() and limit > 0 else []
    return list(islice((t for t in iter_tensors(obj) if t.is_floating_point()), limit))


def first_floating(obj: Any) -> torch.Tensor | None:
    """The first floating-point tensor in `obj`, or None."""
    found = floating_tensors(obj, 1)
    return found[0] if found else None


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any, depth: int = MAX_DEPTH) -> Any:
    """A copy of `obj` with every tensor replaced by `fn(tensor)`; leaves are shared, not copied.

    Containers are rebuilt (namedtuples and tuple subclasses by their type, mappings and
    dataclasses as shallow copies with their members replaced, frozen dataclasses included), so
    `obj` itself is never modified.
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if depth <= 0 or isinstance(obj, (str, bytes)):
        return obj
    sub = lambda v: map_tensors(fn, v, depth - 1)  # noqa: E731
    if isinstance(obj, Mapping):
        return _map_mapping(obj, sub)
    if isinstance(obj, tuple):
        items = [sub(v) for v in obj]
        if hasattr(type(obj), "_fields"):  # a namedtuple
            return type(obj)(*items)
        return tuple(items) if type(obj) is tuple else type(obj)(items)
    if isinstance(obj, list):
        return [sub(v) for v in obj]
    if _is_dataclass_instance(obj):
        new = copy.copy(obj)
        for f in dataclasses.fields(obj):
            if hasattr(obj, f.name):
                object.__setattr__(new, f.name, sub(getattr(obj, f.name)))
        return new
    return obj


def _map_mapping(obj: Mapping, sub: Callable[[Any], Any]) -> Any:
    """`map_tensors` for a mapping: a plain dict stays a dict; a mutable subclass (an `OrderedDict`,
    a `ModelOutput`, whose item assignment also sets its attribute) is copied and refilled."""
    if type(obj) is not dict and isinstance(obj, MutableMapping):
        try:
            new = copy.copy(obj)
            for key, value in obj.items():
                new[key] = sub(value)
            return new
        except Exception:  # a mapping that cannot be copied or refilled: a plain dict still works
            pass
    return {key: sub(value) for key, value in obj.items()}
