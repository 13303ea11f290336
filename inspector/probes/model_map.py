"""Finding the parts of an arbitrary model that probes attach to: blocks, layers, leaf modules."""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from inspector.probes.tensor_tree import first_floating

_LAYER_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    """Qualified name of every submodule ("" for the root)."""
    return {m: n for n, m in model.named_modules()}


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's repeated blocks (a transformer's layers).

    The outermost `nn.ModuleList`/`nn.Sequential` of two or more same-class modules that have
    children of their own; among lists at the same depth, the longest. Outermost matters: in an
    MoE model each layer holds a longer list of experts. Without such a list, the top-level children.
    """
    best: tuple[int, int] | None = None
    blocks: list[tuple[str, nn.Module]] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) < 2:
            continue
        kids = list(mod.named_children())
        if len({type(k) for _, k in kids}) != 1 or not list(kids[0][1].children()):
            continue
        rank = (name.count(".") + (1 if name else 0), -len(kids))
        if best is None or rank < best:
            best = rank
            blocks = [(f"{name}.{k}" if name else k, m) for k, m in kids]
    return blocks or [(n, m) for n, m in model.named_children()]


def layer_index(name: str) -> int | None:
    """The first integer component of a module name ("model.layers.3.mlp" -> 3), or None."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules without children, in registration order (roughly forward order)."""
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]


def first_tensor(out: Any) -> torch.Tensor | None:
    """The first floating-point tensor in a module output (tensor, tuple/list/namedtuple, dict,
    ModelOutput, dataclass; see `tensor_tree`)."""
    return first_floating(out)
