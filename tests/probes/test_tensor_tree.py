"""Walking structured module outputs: dataclasses, namedtuples, mappings, nested lists."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

import pytest
import torch

from inspector.probes.model_map import first_tensor
from inspector.probes.tensor_tree import first_floating, floating_tensors, iter_tensors, map_tensors


@dataclass(frozen=True)
class _Frozen:
    ids: torch.Tensor
    logits: torch.Tensor
    extra: dict = field(default_factory=dict)


class _Pair(NamedTuple):
    a: torch.Tensor
    b: object


def _tree() -> tuple[object, list[torch.Tensor]]:
    t = [torch.full((2,), float(i)) for i in range(4)]
    tree = {"out": _Frozen(ids=torch.arange(3), logits=t[0], extra={"h": [t[1], "text", None]}),
            "pair": _Pair(t[2], OrderedDict(x=t[3]))}
    return tree, t


def test_iter_finds_every_tensor_in_order_and_first_is_floating() -> None:
    tree, t = _tree()
    assert [x.dtype for x in iter_tensors(tree)][0] == torch.int64
    assert all(a is b for a, b in zip(floating_tensors(tree), t, strict=True))
    assert first_floating(tree) is t[0] and first_tensor(tree) is t[0]
    assert first_tensor(_Frozen(ids=torch.arange(2), logits=t[1])) is t[1]
    assert floating_tensors(tree, limit=2) == t[:2]
    assert first_floating("not a container") is None and first_floating(None) is None


def test_a_cycle_or_deep_nesting_is_cut_off() -> None:
    loop: list = [torch.ones(1)]
    loop.append(loop)
    assert len(floating_tensors(loop)) == 1
    deep: object = torch.ones(1)
    for _ in range(20):
        deep = [deep]
    assert floating_tensors(deep) == []


def test_map_rebuilds_containers_and_leaves_the_original_alone() -> None:
    tree, t = _tree()
    new = map_tensors(lambda x: x + 10, tree)
    assert isinstance(new["out"], _Frozen) and isinstance(new["pair"], _Pair)
    assert isinstance(new["pair"].b, OrderedDict)
    assert new["out"].extra["h"][1:] == ["text", None]
    for old, got in zip(floating_tensors(tree), floating_tensors(new), strict=True):
        assert torch.equal(got, old + 10)
    assert all(a is b for a, b in zip(floating_tensors(tree), t, strict=True))  # untouched


def test_map_keeps_a_model_output_consistent() -> None:
    transformers = pytest.importorskip("transformers")
    out = transformers.modeling_outputs.CausalLMOutput(loss=torch.ones(()), logits=torch.zeros(2))
    new = map_tensors(torch.clone, out)
    assert type(new) is type(out) and new.logits is not out.logits
    assert new["logits"] is new.logits and new[0] is new.loss
    assert first_tensor(out) is out.loss
