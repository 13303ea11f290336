"""The activations probe: per-module output histograms and statistics, computed on the device.

Which modules: the model's repeated blocks and each block's direct children (attention, MLP/MoE,
norms; dropouts and identities skipped); for a model without blocks, its top-level children. At
most `max_modules` (64): beyond that, evenly spaced blocks are kept, first and last included.

On sampled steps (`Sampling.activations`, default every 50) a forward hook turns the first
forward's output of each module (the first floating tensor of a tuple) into one row of
`hist_math.output_row`; at the end of the step all rows are stacked and copied to the host with
one `to_host`, then recorded as one `histogram` call (names "activations/<module>", 64 bins over
a range that follows the data: `hist_math.follow_range`, decided on the device, so every finite
value of every sample lies inside its recorded range) and `activation_stats` rows (name =
module; `nonfinite` counts the NaN/inf elements the histogram leaves out). On other steps the
hook returns at once. Dead layers (`dead_layer.DeadLayerTracker`: most of the units alive in the
module's healthy baseline output 0 for the whole batch, on 2 sampled steps in a row) are reported
as `dead_layer` at their onset step, and again on every sampled step while they stay dead; an
output whose peak magnitude leaves its healthy range (`activation_drift.DriftTracker`) is reported
once as `activation_drift`. Under `torch.compile` the hook returns at once while dynamo traces it
(no graph break, no recompile) and modules inside the compiled region are not recorded (said once);
nested-tensor outputs (`nn.TransformerEncoder`'s padded fast path) are recorded over their real
tokens. Both are judged from the host copies once these have landed, so the
training thread never waits.
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from inspector.probes.base import Probe, ProbeContext
from inspector.probes.activation_drift import DriftTracker
from inspector.probes.dead_layer import DeadLayerTracker, DeadVerdict
from inspector.probes.hist_math import (
    COUNTS,
    DEAD,
    HI,
    LO,
    MAX,
    MEAN,
    MIN,
    NONFINITE,
    OVER,
    SAT,
    STD,
    UNDER,
    output_bounds,
    output_row,
)
from inspector.probes.host import HostSlice, PendingCopies, to_host
from inspector.probes.model_map import find_blocks, first_tensor
from inspector.probes.registry import register_probe

log = logging.getLogger("inspector")

_SKIP = ("Dropout", "Identity", "AlphaDropout", "FeatureAlphaDropout")


def select_modules(model: nn.Module, cap: int = 64) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are recorded (see the module docstring)."""
    blocks = find_blocks(model)
    if not blocks:
        return [("model", model)]
    per_block = [[(n, b)] + [(f"{n}.{k}", c) for k, c in b.named_children()] for n, b in blocks]
    per_block = [[m for m in p if type(m[1]).__name__ not in _SKIP] for p in per_block]
    size = max(1, max(len(p) for p in per_block))
    keep = max(1, min(len(blocks), cap // size))
    chosen = sorted(set(np.linspace(0, len(blocks) - 1, keep).round().astype(int).tolist()))
    picked = [m for i in chosen for m in per_block[i]]
    return picked[:cap]


@register_probe
class ActivationsProbe(Probe):
    """Per-module output histograms, mean/std/min/max, dead and saturated fractions."""

    name = "activations"
    kinds = ("histogram", "activation_stats", "anomaly")
    max_modules: ClassVar[int] = 64

    def __init__(self) -> None:
        super().__init__()
        self._names: list[str] = []
        self._bounds: list[tuple[float, float] | None] = []
        self._lohi: list[torch.Tensor | None] = []  # each module's last histogram range, on its device
        self._rows: dict[int, torch.Tensor] = {}
        self._armed = False
        self._pending = PendingCopies()  # (step, module order) -> stacked rows
        self._dead = DeadLayerTracker()
        self._drift = DriftTracker()
        self._broken: set[int] = set()
        self._failed = False
        self._compiled = False  # a hook was traced by torch.compile (set from inside the graph)
        self._said_compiled = False

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        modules = select_modules(ctx.model, self.max_modules)
        self._names = [n for n, _ in modules]
        self._bounds = [output_bounds(m) for _, m in modules]
        self._lohi = [None] * len(modules)
        for i, (_, module) in enumerate(modules):
            self.track(module.register_forward_hook(self._make_hook(i)))
        self._armed = ctx.sampling.due(self.name, ctx.step)
        return None

    def _make_hook(self, i: int):
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if torch.compiler.is_compiling():  # inside a compiled graph: record nothing, add nothing
                self._compiled = True
                return
            if not self._armed or i in self._rows or i in self._broken:
                return
            try:
                self._capture(i, out)
            except Exception as exc:  # a recording problem must never reach the training loop
                self._broken.add(i)
                log.warning("inspector: activations of %s not recorded: %s: %s", self._names[i],
                            type(exc).__name__, exc)
        return hook

    def _capture(self, i: int, out: Any) -> None:
        x = first_tensor(out)
        if x is not None and x.is_nested:  # nn.TransformerEncoder's padded fast path: real tokens only
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in x.unbind()]) if x.size(0) else None
        if x is None or x.numel() == 0:
            return
        old = self._lohi[i]
        with torch.no_grad():
            row, self._lohi[i] = output_row(x, old if old is not None and old.device == x.device else None,
                                            self._bounds[i])
        self._rows[i] = row

    def on_step_end(self, step: int) -> None:
        if self._compiled and not self._said_compiled:
            self._said_compiled = True
            log.warning("inspector: activations: the model runs under torch.compile; outputs of modules inside "
                        "the compiled region are not recorded (compile blocks separately, or watch an eager "
                        "model, to record them)")
        try:
            if self._rows:
                self._flush(step)
            self._drain()
        except Exception as exc:
            self._fail(exc)
        finally:
            self._rows.clear()
            self._armed = not self._failed and self.ctx.sampling.due(self.name, step + 1)

    def _flush(self, step: int) -> None:
        order = sorted(self._rows)
        host = to_host(torch.stack([self._rows[i] for i in order]))
        names = [self._names[i] for i in order]
        rec = self.ctx.recorder
        rec.histograms([f"activations/{n}" for n in names], HostSlice(host, (slice(None), COUNTS), np.int64),
                       HostSlice(host, (slice(None), LO)), HostSlice(host, (slice(None), HI)), step=step,
                       underflow=HostSlice(host, (slice(None), UNDER), np.int64),
                       overflow=HostSlice(host, (slice(None), OVER), np.int64))
        cols = {"name": names}
        for key, col in (("mean", MEAN), ("std", STD), ("min", MIN), ("max", MAX), ("dead_frac", DEAD),
                         ("saturated_frac", SAT)):
            cols[key] = HostSlice(host, (slice(None), col))
        cols["nonfinite"] = HostSlice(host, (slice(None), NONFINITE), np.int64)
        rec.submit("activation_stats", cols, rows=len(order), step=step)
        self._pending.push((step, order), host)

    def _drain(self, wait: bool = False) -> None:
        for (step, order), rows in self._pending.drain(wait):
            for i, frac, lo, hi in zip(order, rows[:, DEAD].tolist(), rows[:, MIN].tolist(), rows[:, MAX].tolist()):
                self._check_dead(step, i, frac)
                self._check_drift(step, i, lo, hi)

    def _check_dead(self, step: int, i: int, frac: float) -> None:
        name = self._names[i]
        verdict = self._dead.update(name, step, frac)
        for at in verdict.steps:
            self.ctx.report("dead_layer", _dead_message(name, at, frac, verdict), module=name, value=frac, step=at)

    def _check_drift(self, step: int, i: int, lo: float, hi: float) -> None:
        name = self._names[i]
        median = self._drift.update(name, lo, hi)
        if median is not None:
            peak = max(abs(lo), abs(hi))
            self.ctx.report("activation_drift", f"{name}: output peak {peak:.4g} at step {step} is {peak / median:.0f}x "
                                                f"its healthy median {median:.4g}", module=name, value=peak, step=step)

    def _fail(self, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            self._armed = False
            log.warning("inspector: activations probe stopped recording: %s: %s", type(exc).__name__, exc)

    def detach(self) -> None:
        super().detach()
        self._rows.clear()
        try:
            self._drain(wait=True)  # the run is closing: waiting for the last copies is fine now
        except Exception as exc:
            self._fail(exc)
        self._pending.clear()


def _dead_message(name: str, at: int, frac: float, verdict: DeadVerdict) -> str:
    if at == verdict.onset:
        return (f"{name}: {frac:.0%} of its units output 0 for the whole batch from step {at} on (its healthy "
                f"baseline: {verdict.baseline:.0%}; flagged at >= {verdict.threshold:.0%})")
    return f"{name}: still dead at step {at} ({frac:.0%} of its units output 0; dead since step {verdict.onset})"
