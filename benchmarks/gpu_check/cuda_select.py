"""pytest plugin: keep only the tests that are skipped without CUDA, deselect the rest.

A test needs CUDA when a `skip`/`skipif` marker's reason names CUDA or a GPU (e.g. the
`reason="needs a CUDA device"` of tests/probes/test_gradients.py), or when its own body calls
`pytest.skip` under an `if` that tests `torch.cuda.is_available()` (read from its syntax tree). Loaded with
`pytest -p benchmarks.gpu_check.cuda_select`; the selected node ids are printed and written to
`$GPU_CHECK_SELECTED` when set.
"""
from __future__ import annotations

import ast
import inspect
import os
import re
import textwrap
from typing import Any

import pytest

_CUDA = re.compile(r"\bcuda\b|\bgpu\b", re.IGNORECASE)


def needs_cuda(item: pytest.Item) -> bool:
    """True when `item` is skipped on a machine without CUDA (see the module docstring)."""
    for mark in item.iter_markers():
        if mark.name in ("skip", "skipif"):
            reason = str(mark.kwargs.get("reason", "")) + " ".join(str(a) for a in mark.args if isinstance(a, str))
            if _CUDA.search(reason):
                return True
    fn: Any = getattr(item, "function", None)
    if fn is None:
        return False
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    return any(_skips_without_cuda(node) for node in ast.walk(tree))


def _skips_without_cuda(node: ast.AST) -> bool:
    """An `if ...cuda.is_available()...:` whose body calls `pytest.skip` (code, not text in a string)."""
    if not isinstance(node, ast.If) or "cuda.is_available" not in ast.unparse(node.test):
        return False
    return any(isinstance(n, ast.Call) and ast.unparse(n.func) == "pytest.skip"
               for stmt in node.body for n in ast.walk(stmt))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect every test that runs without CUDA."""
    keep = [i for i in items if needs_cuda(i)]
    drop = [i for i in items if not needs_cuda(i)]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
    print(f"\ngpu_check: {len(keep)} test(s) need CUDA: " + ", ".join(i.nodeid for i in keep))
    target = os.environ.get("GPU_CHECK_SELECTED")
    if target:
        with open(target, "w") as fh:
            fh.write("".join(f"{i.nodeid}\n" for i in keep))
