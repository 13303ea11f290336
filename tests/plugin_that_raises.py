"""A third-party-style plugin whose probes each raise in one kind of hook (tests/test_probe_errors.py).

Published to `inspector.plugins` by the test through a real dist-info entry point. Every probe
registers its hooks the ordinary way (torch's `register_*` and `Probe.track`) and does not guard
anything itself; `CALLS` counts how often each raising callable ran.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn

from inspector.plugins import PluginContext
from inspector.probes.backward_end import BackwardEnd
from inspector.probes.base import Probe, ProbeContext

CALLS: Counter[str] = Counter()
"""Calls of each probe's raising callable (by probe name)."""

BLOCK = "layers.0"
"""The module the module-hook probes hook."""


class PlantedError(RuntimeError):
    """What every probe here raises."""


class _Raising(Probe):
    """Raises PlantedError the moment its hook of one kind runs."""

    hook = ""

    def _raise(self, *_: Any) -> None:
        CALLS[self.name] += 1
        raise PlantedError(f"planted in the {self.hook}")

    def _block(self, ctx: ProbeContext) -> nn.Module:
        return dict(ctx.model.named_modules())[BLOCK]

    def _param(self, ctx: ProbeContext) -> nn.Parameter:
        return next(p for p in ctx.model.parameters() if p.requires_grad)


class ForwardPre(_Raising):
    """Raises in a module forward-pre hook."""

    name, hook = "raise_forward_pre", "forward-pre hook"

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        self.track(self._block(ctx).register_forward_pre_hook(self._raise))
        return None


class Forward(_Raising):
    """Raises in a module forward hook (with kwargs)."""

    name, hook = "raise_forward", "forward hook"

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        self.track(self._block(ctx).register_forward_hook(self._raise, with_kwargs=True))
        return None


class Backward(_Raising):
    """Raises in a module full backward hook."""

    name, hook = "raise_backward", "module backward hook"

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        self.track(self._block(ctx).register_full_backward_hook(self._raise))
        return None


class TensorHook(_Raising):
    """Raises in a tensor (gradient) hook on a parameter."""

    name, hook = "raise_tensor", "tensor hook"

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        self.track(self._param(ctx).register_hook(self._raise))
        return None


class PostAccumulate(_Raising):
    """Raises in a post-accumulate-grad hook."""

    name, hook = "raise_post_accumulate", "post-accumulate-grad hook"

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        self.track(self._param(ctx).register_post_accumulate_grad_hook(self._raise))
        return None


class EngineCallback(_Raising):
    """Raises in the autograd engine callback `BackwardEnd` queues at the end of backward."""

    name, hook = "raise_engine_callback", "engine callback"

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        for handle in BackwardEnd([self._param(ctx)], self._raise).handles:
            self.track(handle)
        return None


class OptimizerPre(_Raising):
    """Raises in an optimizer step pre-hook."""

    name, hook = "raise_optimizer_pre", "optimizer step pre-hook"

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        if ctx.optimizer is None:
            return "needs an optimizer"
        self.track(ctx.optimizer.register_step_pre_hook(self._raise))
        return None


class OptimizerPost(_Raising):
    """Raises in an optimizer step post-hook."""

    name, hook = "raise_optimizer_post", "optimizer step post-hook"

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        if ctx.optimizer is None:
            return "needs an optimizer"
        self.track(ctx.optimizer.register_step_post_hook(self._raise))
        return None


class StepEnd(_Raising):
    """Raises in `on_step_end`."""

    name, hook = "raise_step_end", "on_step_end"

    def on_step_end(self, step: int) -> None:
        self._raise()


class Attach(_Raising):
    """Registers a hook, then raises in `attach`."""

    name, hook = "raise_attach", "attach"

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        self.track(self._block(ctx).register_forward_hook(lambda *_: None))
        self._raise()
        return None


class Detach(_Raising):
    """Raises in `detach` (at the Watch's close), after removing its hooks."""

    name, hook = "raise_detach", "detach"

    def detach(self) -> None:
        super().detach()
        self._raise()


class _FailsOnTheWriter:
    """A deferred column value whose `resolve()` (on the Recorder's writer thread) raises."""

    def resolve(self) -> Any:
        CALLS["raise_writer"] += 1
        raise PlantedError("planted in a deferred value")


class Writer(_Raising):
    """Submits, at step 1, a record whose deferred value raises on the writer thread."""

    name, hook = "raise_writer", "writer thread"

    def on_step_end(self, step: int) -> None:
        if step == 1:
            self.ctx.recorder.submit("scalar", {"name": "plugin/value", "value": _FailsOnTheWriter()}, 1, step=step)


class Healthy(Probe):
    """The plugin's one working probe: records a scalar from a forward hook's output, every step."""

    name = "plugin_healthy"

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        self.track(dict(ctx.model.named_modules())[BLOCK].register_forward_hook(self._hook))
        return None

    @torch.no_grad()
    def _hook(self, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        from inspector.probes.host import to_host

        self.ctx.recorder.scalar("plugin/block_out_mean", to_host(out.float().mean()))


RAISING = [ForwardPre, Forward, Backward, TensorHook, PostAccumulate, EngineCallback, OptimizerPre, OptimizerPost,
           StepEnd, Attach, Detach, Writer]
"""Every raising probe class, one per place a probe's code runs."""


def register(ctx: PluginContext) -> None:
    """Offer every raising probe and the healthy one (none of them in the "default" set)."""
    for cls in [*RAISING, Healthy]:
        ctx.add_probe(cls.name, f"{__name__}:{cls.__name__}")
