"""Finding the parts of an arbitrary model that probes attach to: blocks, layers, leaf modules."""
from __future__ import annotations

import re

from torch import nn

_LAYER_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    """Qualified name of every submodule ("" for the root)."""
    return {m: n for n, m in model.named_modules()}


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's repeated blocks: the longest `nn.ModuleList`/`nn.Sequential` of same-class
    modules (a transformer's layers); if there is none, the model's top-level children."""
    best: list[tuple[str, nn.Module]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.ModuleList, nn.Sequential)) and len(mod) > len(best):
            kids = list(mod.named_children())
            if kids and len({type(k) for _, k in kids}) == 1 and list(kids[0][1].children()):
                best = [(f"{name}.{k}" if name else k, m) for k, m in kids]
    if best:
        return best
    return [(n, m) for n, m in model.named_children()]


def layer_index(name: str) -> int | None:
    """The first integer component of a module name ("model.layers.3.mlp" -> 3), or None."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules without children, in registration order (roughly forward order)."""
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
