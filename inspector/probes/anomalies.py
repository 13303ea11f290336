"""The anomalies probe: non-finite losses and activations (with the first module that produced
them) and loss spikes. Other probes report their own anomalies through `ProbeContext.report`
(exploding/vanishing/non-finite gradients, dead layers, starved experts, attention collapse).

Finding the first non-finite module without slowing training:
- CPU: every module's output is only *referenced* during the forward (autograd keeps most of them
  anyway); the root output is checked once per forward, and only when it is non-finite are the
  referenced outputs scanned, in the order the modules finished (inner before outer), for the
  first bad one.
- CUDA: every module output gets a device-side flag (a sum and `isfinite`, no sync); the flags are
  stacked at the end of the forward and copied to the host asynchronously, then read one step later.
Under `torch.no_grad()` on CPU (inference) only block outputs are referenced, to keep peak memory low.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from inspector.probes.base import Probe, ProbeContext
from inspector.probes.host import PendingCopies, to_host
from inspector.probes.model_map import find_blocks, first_tensor
from inspector.probes.registry import register_probe
from inspector.probes.robust import RobustZ

LOSS_SPIKE_Z = 6.0
LOSS_SPIKE_RATIO = 1.5


def _nonfinite(t: torch.Tensor) -> torch.Tensor:
    """0-d bool tensor on t's device: does t hold a NaN or an Inf? (one reduction; no sync)"""
    return ~torch.isfinite(t.sum(dtype=torch.float32))


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
        self._order: list[str] = []
        self._refs: list[tuple[str, torch.Tensor]] = []
        self._flags: list[torch.Tensor] = []
        self._flag_names: list[str] = []
        self._pending = PendingCopies()  # (step, what, detail) -> flags or loss, judged in order
        self._bad_module: dict[int, str] = {}
        self._loss_z = RobustZ(window=100, min_history=20)
        self._active = False

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        model = ctx.model
        self.track(model.register_forward_pre_hook(self._root_pre))
        self.track(model.register_forward_hook(self._root_post))
        block_ids = {id(m) for _, m in find_blocks(model)}
        inside = _inside_experts(model)
        for name, module in model.named_modules():
            if name and id(module) not in inside:
                self.track(module.register_forward_hook(self._make_hook(name, id(module) in block_ids)))
        return None  # loss checks apply to every model, even one without submodules

    # ---- forward hooks ------------------------------------------------------------------------

    def _root_pre(self, module: nn.Module, args: Any) -> None:
        self._active = self.ctx.sampling.due(self.name, self.ctx.step) and self.ctx.step not in self._bad_module
        self._refs.clear()
        self._flags.clear()
        self._flag_names.clear()

    def _make_hook(self, name: str, is_block: bool):
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if not self._active:
                return
            t = first_tensor(out)
            if t is None:
                return
            if t.device.type == "cuda":
                self._flags.append(_nonfinite(t.detach()))
                self._flag_names.append(name)
            elif is_block or torch.is_grad_enabled():
                self._refs.append((name, t))
        return hook

    def _root_post(self, module: nn.Module, args: Any, out: Any) -> None:
        if not self._active:
            return
        step = self.ctx.step
        try:
            if self._flags:
                flags = to_host(torch.stack(self._flags))
                self._pending.push((step, "flags", list(self._flag_names)), flags)
            elif self._refs:
                root = first_tensor(out)
                if root is not None and root.device.type != "cuda" and bool(_nonfinite(root.detach())):
                    self._localise(step)
        finally:
            self._refs.clear()
            self._flags.clear()
            self._flag_names.clear()

    def _localise(self, step: int) -> None:
        for name, t in self._refs:
            if bool(_nonfinite(t.detach())):
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
            if what == "flags":
                hits = host.reshape(-1).nonzero()[0]
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
        history = list(self._loss_z.values)
        z = self._loss_z.score(loss)
        if z > LOSS_SPIKE_Z and history and loss > LOSS_SPIKE_RATIO * sorted(history)[len(history) // 2]:
            self.ctx.report("loss_spike", f"loss spiked to {loss:.4g} at step {step} (robust z = {z:.1f})",
                            value=loss, step=step)
