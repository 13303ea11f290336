"""The anomalies probe: non-finite losses and activations (with the first module that produced
them) and loss spikes. Other probes report their own anomalies through `ProbeContext.report`
(exploding/vanishing/non-finite gradients, dead layers, starved experts, attention collapse).
Loss spikes are judged by `loss_spike.LossSpikeDetector`: reported once at onset, and a lasting
rise never becomes the healthy baseline.

Finding the first non-finite module without slowing training:
- CPU: only the model's blocks and the modules outside them are hooked, and their outputs (and
  the blocks' inputs) are only *referenced* during the forward. The root output is checked once
  per forward; only when it is non-finite are the referenced outputs scanned, in the order the
  modules finished, and the first bad block is run again with every module inside it hooked
  (`nonfinite_replay`) to name the module within. Under `torch.no_grad()` (inference, where a
  block may append to a KV cache) the block is not rerun and is itself reported.
- CUDA: every module output (MoE experts' inner layers excepted) gets a device-side sum, no sync;
  the sums are stacked at the end of the forward and copied to the host asynchronously, then
  judged one step later. Which scheme applies is decided where the parameters are at `watch()`.

Outputs may be structured (tuples, namedtuples, dicts, `ModelOutput`s, dataclasses): every
floating-point tensor in them is checked (up to `tensor_tree.MAX_TENSORS`), so a NaN in `logits`
is seen even when a finite `aux_loss` comes first.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from inspector.probes.base import Probe, ProbeContext
from inspector.probes.host import PendingCopies, to_host
from inspector.probes.model_map import find_blocks
from inspector.probes.nonfinite_replay import any_nonfinite, first_nonfinite_inside, nonfinite_witness
from inspector.probes.loss_spike import LossSpikeDetector
from inspector.probes.registry import register_probe
from inspector.probes.tensor_tree import floating_tensors

log = logging.getLogger("inspector")

_Call = tuple[nn.Module, tuple[Any, ...], dict[str, Any]]  # a block with the inputs it was called with


def _witness(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One 0-d tensor, non-finite when any of `tensors` on the first one's device holds a NaN or
    an Inf (no sync)."""
    if len(tensors) == 1:
        return nonfinite_witness(tensors[0])
    device = tensors[0].device
    return torch.stack([nonfinite_witness(t) for t in tensors if t.device == device]).sum()


def _inside_experts(model: nn.Module) -> set[int]:
    """Ids of the submodules of MoE experts (lists of two or more same-class modules inside a block).

    The experts themselves stay hooked, so a NaN is still placed at its expert; their inner layers
    (3 linears each, hundreds in a large MoE) are not, which keeps the forward hooks few.
    """
    out: set[int] = set()
    for _, block in find_blocks(model):
        for mod in block.modules():
            kids = list(mod.children()) if isinstance(mod, nn.ModuleList) else []
            if len(kids) >= 2 and len({type(k) for k in kids}) == 1:
                for kid in kids:
                    out.update(id(m) for m in kid.modules() if m is not kid)
    return out


@register_probe
class AnomalyProbe(Probe):
    """Non-finite loss/activations with their first module, and loss spikes (robust z-score)."""

    name = "anomalies"
    kinds = ("anomaly",)

    def __init__(self) -> None:
        super().__init__()
        self._outputs: list[tuple[str, list[torch.Tensor], _Call | None]] = []
        self._sums: list[torch.Tensor] = []
        self._sum_names: list[str] = []
        self._pending = PendingCopies()  # (step, what, detail) -> sums or loss, judged in order
        self._bad_module: dict[int, str] = {}
        self._loss = LossSpikeDetector()
        self._active = False
        self._failed = False

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        model = ctx.model
        # the root's hooks are a compiled region's boundary: eager there (torch._dynamo.disable)
        self.track(model.register_forward_pre_hook(torch._dynamo.disable(self._root_pre)))
        self.track(model.register_forward_hook(torch._dynamo.disable(self._root_post)))
        blocks = find_blocks(model)
        block_ids = {id(m) for _, m in blocks}
        if any(p.is_cuda for p in model.parameters()):
            skip = _inside_experts(model)
        else:
            skip = {id(m) for _, b in blocks for m in b.modules() if m is not b}
        for name, module in model.named_modules():
            if not name or id(module) in skip:
                continue
            if id(module) in block_ids:
                self.track(module.register_forward_hook(self._make_block_hook(name), with_kwargs=True))
            else:
                self.track(module.register_forward_hook(self._make_hook(name)))
        return None  # loss checks apply to every model, even one without submodules

    # ---- forward hooks ------------------------------------------------------------------------

    def _guarded(self, fn: Any, *args: Any) -> None:
        """Run a hook body; a failure switches the activation checks off with one warning."""
        if self._failed:
            return
        try:
            fn(*args)
        except Exception as exc:  # nothing a probe raises may reach the training loop
            self._failed, self._active = True, False
            self._clear()
            log.warning("inspector: anomalies probe stopped checking activations: %s: %s", type(exc).__name__, exc)

    def _root_pre(self, module: nn.Module, args: Any) -> None:
        self._active = (not self._failed and self.ctx.sampling.due(self.name, self.ctx.step)
                        and self.ctx.step not in self._bad_module)
        self._clear()

    def _clear(self) -> None:
        self._outputs.clear()
        self._sums.clear()
        self._sum_names.clear()

    def _keep(self, name: str, out: Any, call: _Call | None = None) -> None:
        tensors = floating_tensors(out)
        if not tensors:
            return
        if tensors[0].device.type == "cuda":
            self._sums.append(_witness(tensors))
            self._sum_names.append(name)
        else:
            self._outputs.append((name, tensors, call))

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if torch.compiler.is_compiling():  # traced into a compiled graph: add nothing
                return
            if self._active:
                self._guarded(self._keep, name, out)
        return hook

    def _make_block_hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            if torch.compiler.is_compiling():
                return
            if self._active:
                self._guarded(self._keep, name, out, (module, args, kwargs))
        return hook

    def _root_post(self, module: nn.Module, args: Any, out: Any) -> None:
        if not self._active:
            return
        self._active = False  # a block recomputed in backward (activation checkpointing) is not kept
        self._guarded(self._check_forward, out)

    def _check_forward(self, out: Any) -> None:
        """Queue the CUDA sums, or on CPU look for the first non-finite output if the root's is."""
        step = self.ctx.step
        try:
            if self._sums:
                self._pending.push((step, "sums", list(self._sum_names)), to_host(torch.stack(self._sums)))
            else:
                roots = [t for t in floating_tensors(out) if t.device.type != "cuda"]
                if any_nonfinite(roots):
                    if self._outputs:
                        self._localise(step)
                    else:  # nothing referenced: the modules ran inside a compiled region (or there are none)
                        self._found(step, "model")
        finally:
            self._clear()

    def _localise(self, step: int) -> None:
        """The first referenced output that is non-finite; inside a block, the module within it."""
        for name, tensors, call in self._outputs:
            if not any_nonfinite(tensors):
                continue
            if call is not None and torch.is_grad_enabled():
                block, args, kwargs = call
                name = first_nonfinite_inside(block, name, args, kwargs, self.ctx.hook_ids) or name
            self._found(step, name)
            return

    def _found(self, step: int, module: str) -> None:
        if step in self._bad_module:
            return
        self._bad_module[step] = module
        self.ctx.report("nonfinite_activation", f"first non-finite activation at step {step}: output of {module}",
                        module=module, severity="error", step=step)

    # ---- loss ---------------------------------------------------------------------------------

    def on_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        for key in ("loss", "train/loss", "train_loss"):
            if key in scalars:
                value = scalars[key]
                if isinstance(value, torch.Tensor):
                    self._pending.push((step, "loss", None), to_host(value.detach().float()))
                else:
                    self._pending.push((step, "loss", float(value)), None)
                break
        self._drain()

    def on_step_end(self, step: int) -> None:
        self._drain()

    def _drain(self) -> None:
        for (step, what, detail), host in self._pending.drain():
            if what == "sums":
                hits = (~np.isfinite(host.reshape(-1))).nonzero()[0]
                if len(hits):
                    self._found(step, detail[int(hits[0])])
            else:
                self._check_loss(step, float(host) if host is not None else detail)

    def _check_loss(self, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            origin = self._bad_module.get(step, "")
            where = f"; first non-finite activation in {origin}" if origin else ""
            self.ctx.report("nonfinite_loss", f"loss is {loss} at step {step}{where}", module=origin,
                            severity="error", value=loss, step=step)
            return
        verdict = self._loss.update(loss)
        if verdict is not None:
            self.ctx.report("loss_spike", f"loss spiked to {loss:.4g} at step {step} ({verdict})", value=loss, step=step)
