"""`optimizer.step(closure)`: forward and backward run inside the step (Lightning, LBFGS).

An optimizer step pre-hook that needs the gradients, or that times the update alone, wraps the
closure with `wrap_closure` and returns its result, which torch uses as the step's new arguments.
"""
from __future__ import annotations

from typing import Any, Callable


def wrap_closure(args: tuple, kwargs: dict, *, before: Callable[[], None] | None = None,
                 after: Callable[[], None] | None = None) -> tuple[tuple, dict] | None:
    """New (args, kwargs) for a step pre-hook whose closure calls `before()`/`after()` around its
    first call; None when the step has no closure. `args[0]` is the optimizer itself."""
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    if closure is None:
        return None
    calls = []

    def wrapped() -> Any:
        first = not calls
        calls.append(True)
        if first and before is not None:
            before()
        loss = closure()
        if first and after is not None:
            after()
        return loss

    if "closure" in kwargs:
        return args, {**kwargs, "closure": wrapped}
    return (args[0], wrapped, *args[2:]), kwargs
