"""Forward hooks registered only while switched on.

A module with no hook takes torch's fast call path; one with a hook, even one that returns at once,
goes through the slow path every call. A probe that records on a few sampled steps (attention every
16th decode iteration) switches its hooks on for those steps only, so the other steps cost its
modules nothing.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from inspector.probes.base import Probe


class SwitchableHooks:
    """Forward hooks (`pre`: pre-hooks; `with_kwargs` as torch's) of `probe` on modules, guarded like
    `Probe.track`'s, registered while `on`.

    Track the object itself (`probe.track(hooks)`): `remove()` takes every hook off for good.
    """

    def __init__(self, probe: Probe, hooks: Sequence[tuple[nn.Module, Callable[..., Any]]], *, pre: bool = False,
                 with_kwargs: bool = False) -> None:
        self.probe = probe
        kind = "forward pre-hook" if pre else "forward hook"
        self._hooks = [(module, probe.guard(fn, _site(probe, module, fn, kind))) for module, fn in hooks]
        self._pre, self._with_kwargs = pre, with_kwargs
        self._handles: list[Any] = []
        self._removed = False

    def __len__(self) -> int:
        return len(self._hooks)

    @property
    def on(self) -> bool:
        """True while the hooks are registered."""
        return bool(self._handles)

    def switch(self, on: bool) -> None:
        """Register the hooks (`on`) or take them off; nothing when already so or removed."""
        if on == self.on or self._removed:
            return
        ids = self.probe.ctx.hook_ids if self.probe.ctx is not None else set()
        if on:
            register = "register_forward_pre_hook" if self._pre else "register_forward_hook"
            self._handles = [getattr(module, register)(fn, with_kwargs=self._with_kwargs) for module, fn in self._hooks]
            ids.update(h.id for h in self._handles)
        else:
            for h in self._handles:
                h.remove()
                ids.discard(h.id)
            self._handles = []

    def remove(self) -> None:
        """Take every hook off; `switch` does nothing after this."""
        self.switch(False)
        self._removed = True


def _site(probe: Probe, module: nn.Module, fn: Callable[..., Any], kind: str) -> Callable[[], str]:
    """The guard's description of a failed hook ("forward hook on layers.0.attn.qk_capture (_hook)")."""
    def where() -> str:
        name = probe.ctx.name_of(module) if probe.ctx is not None else type(module).__name__
        inner = getattr(fn, "func", fn)
        return f"{kind} on {name or 'the model'} ({getattr(inner, '__qualname__', type(fn).__name__)})"
    return where
