"""The gradients probe: the true (pre-clip) global gradient norm, the norm the optimizer applied and
the clip coefficient every step, per-group statistics on sampled steps, and non-finite / exploding /
vanishing gradient anomalies.

When: the pre-clip gradients are measured when backward has finished, before the training loop
can clip them (`backward_end.BackwardEnd`: a post-accumulate-grad hook per trainable parameter
queues one autograd engine callback per backward pass, run after DDP's all-reduce and FSDP2's
reduce-scatter finalize). With gradient accumulation every backward is measured and the last one
before the optimizer step counts (the gradients are cumulative, so it sees the whole sum).
The rest is computed with an optimizer (`watch(..., optimizer=opt)`) in the optimizer's step
*pre*-hook (gradients final, accumulation and clipping done, before the update; when the step
is given a closure, as Lightning does, right after the closure's first call), and the
update/weight ratio in its *post*-hook from a copy of the weights taken in the pre-hook on
sampled steps only. Without an optimizer it is computed in `Watch.step()`, from the gradients
still held then: call `opt.step()` (if any) before `zero_grad()` and `Watch.step()` before the
next `backward()`. `update_ratio` is then null.

Every step, scalars:
- `grad_norm/global`: 2-norm of all gradients stacked into one vector as backward left them
  (before any clipping); when no backward pass reached the parameters since the last step (the
  gradients were set by hand), the norm at the step instead.
- `grad_norm/applied`: the same norm at the optimizer step (after the loop's clipping).
- `grad_norm/clip_coef`: applied / pre-clip (1 when nothing was clipped, or for a zero gradient;
  NaN when the norm is not finite).
The two last are recorded only when the pre-clip norm was measured. Per-tensor norms come from
`torch._foreach_norm`; the pre-clip vector is copied to the host with one `to_host` and read when
it has landed (at once on CPU, usually a step later on CUDA; waited for only when 8 are pending,
which no real training loop reaches), to report `nonfinite_grad` (module = owner of the first
parameter in backward order, i.e. the last in registration order, with a non-finite gradient),
`exploding_grad` (pre-clip norm with robust z-score > 10 and > 10x the median of a *healthy*
baseline: the last 100 norms that were not flagged, so a sustained explosion stays flagged) and
`vanishing_grad` (norm < 1e-8 on 5 consecutive steps after 10 warm-up steps). With an fp16
`torch.amp.GradScaler` the gradients at backward end are scaled: the pre-clip norms are divided by
the scale of the scaler that scaled the loss (`grad_scaler.active_scale`), so every norm is that of
the true gradients; a non-finite gradient under a scaler is a loss-scale overflow the scaler skips
(reported as `nonfinite_grad` with severity warning and saying so).

Sampled steps (`Sampling.gradients`, default every 50): one `grad_stats` row per group, from the
gradients at the optimizer step (after clipping: what the update used). Groups are
the parameters, or, above `max_groups` (64) parameter tensors, layers (`grad_math.group_key`).
Columns: `norm` (2-norm of the group's gradient), `mean`, `var` (population variance, divisor n,
over all the group's elements, E[g^2] - E[g]^2 from fp32 sums, float64 sums for float64
gradients: see `grad_math.group_stats`), `max_abs`, `zero_frac` (exact zeros), `update_ratio`
(||w_after - w_before|| / ||w_before|| over the group), `var_over_steps` (gradient noise: a
Welford running variance over the sampled steps; per element when the model has at most
`elementwise_welford_max_params` (50M) parameters, reported as the mean over the group's elements
of each element's population variance (state: the running mean per element, 1x the parameters'
memory in fp32, or in float64 for float64 parameters, and the summed M2 per tensor, see
`grad_math.ElementWelford`); above that, to save that memory, the population variance of the
group's norm instead). Memory on sampled steps: one transient copy of the weights (for
`update_ratio`) and one fp32 (float64 for float64) copy of the gradients (the Welford delta).
Every dtype is measured: fp16/bf16/fp32 gradients with fp32 accumulation, float64 ones in float64.

DTensor parameters (FSDP2's `fully_shard`, HSDP, DTensor-based tensor parallelism): every value
is that of the whole tensor, as an unsharded run would record it. Each rank reduces the shard it
holds (partial squared norms, sums, nonzero counts, maxima, Welford sums; the Welford state and
the weight copy for `update_ratio` are per shard, so memory grows with the local shard only,
and no parameter is ever gathered whole) and `grad_math.ShardSums` combines them with one small
collective per step: an `all_reduce` of a [sharded tensors, 2] matrix (the pre-clip and applied
squared norms), or on sampled steps one all-gather of a [sharded tensors, 8] matrix from every
rank (those two, the weight and update squared norms, sums, nonzero counts, Welford sums and
maxima), issued in the optimizer's post-hook (or at `Watch.step()` without an optimizer). Plain
tensors (DDP's all-reduced gradients, a single process) are recorded as they are, with no
collective. Every rank must take the same steps (as FSDP2 itself requires).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from inspector.probes.backward_end import BackwardEnd
from inspector.probes.base import Probe, ProbeContext
from inspector.probes.baseline import HealthyBaseline
from inspector.probes import grad_scaler
from inspector.probes.closure import wrap_closure
from inspector.probes.grad_math import (
    STATS,
    ElementWelford,
    GroupLayout,
    NormWelford,
    ShardSums,
    group_parameters,
    group_stats,
    local,
    norms,
    param_sums,
)
from inspector.probes.host import HostSlice, PendingCopies, to_host
from inspector.probes.registry import register_probe
from inspector.probes.update_sketch import UpdateSketch


EXPLODE_Z = 10.0
EXPLODE_RATIO = 10.0
VANISH_NORM = 1e-8
VANISH_STEPS = 5
WARMUP_STEPS = 10


@dataclass
class _Measured:
    """One step's per-tensor values (partial over the local shard for DTensors) until recorded.

    A sampled step with an optimizer is held from the optimizer's pre-hook (gradients) to its
    post-hook (the update), so that the step needs one collective under FSDP2."""

    step: int
    present: tuple[int, ...]
    norms_P: torch.Tensor
    pre_norms_P: torch.Tensor | None
    layout: GroupLayout | None = None
    sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # sum, max |g|, nonzero count
    m2k_P: torch.Tensor | None = None  # ElementWelford's per-tensor sums of variances
    before: list[torch.Tensor] | None = None  # the weights (local shards) before the update
    weight_norms_P: torch.Tensor | None = None
    delta_norms_P: torch.Tensor | None = None


@dataclass
class _PreClip:
    """Per-tensor gradient norms measured when the last backward pass finished."""

    present: tuple[int, ...]
    norms_P: torch.Tensor


@register_probe
class GradientsProbe(Probe):
    """Global gradient norm every step, per-group gradient statistics on sampled steps."""

    name = "gradients"
    kinds = ("scalar", "grad_stats", "layer_trace", "anomaly")
    max_groups: ClassVar[int] = 64
    elementwise_welford_max_params: ClassVar[int] = 50_000_000

    def __init__(self) -> None:
        super().__init__()
        self._names: list[str] = []
        self._params: list[nn.Parameter] = []
        self._group_names: list[str] = []
        self._group_of: list[int] = []
        self._layouts: dict[tuple[int, ...], GroupLayout] = {}
        self._welford: ElementWelford | NormWelford | None = None
        self._pending = PendingCopies()  # (step, parameters present) -> [pre-clip norm, pre-clip norms...]
        self._sampled: _Measured | None = None
        self._shards: ShardSums | None = None
        self._pre_clip: _PreClip | None = None
        self._baseline = HealthyBaseline(window=100, min_history=20)
        self._evaluated = 0
        self._vanishing = 0
        self._failed = False
        self._scaled = False  # a GradScaler scaled the loss of some measured backward
        self._scaler_hooked = False
        self._sketch: UpdateSketch | None = None
        self._trace: tuple[int, tuple[int, ...], GroupLayout, torch.Tensor] | None = None  # a step's trace awaiting its update
        self._update_due = False

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        named = [(n, p) for n, p in ctx.model.named_parameters() if p.requires_grad]
        if not named:
            return "the model has no trainable parameters"
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._group_names, self._group_of = group_parameters(self._names, self.max_groups)
        self._shards = ShardSums(self._params)
        held = sum(-(-p.numel() // ways) for p, ways in zip(self._params, self._shards.ways))  # the same on every rank
        if held <= self.elementwise_welford_max_params:
            self._welford = ElementWelford(len(self._params))
        else:
            self._welford = NormWelford(len(self._group_names))
        grad_scaler.install()
        self._scaler_hooked = True
        for handle in BackwardEnd(self._params, lambda: self._guarded(self._measure_backward)).handles:
            self.track(handle)
        if ctx.optimizer is not None:
            self._sketch = UpdateSketch(self._params)
            self.track(ctx.optimizer.register_step_pre_hook(self._pre_step))
            self.track(ctx.optimizer.register_step_post_hook(self._post_step))
        return None

    # ---- entry points ------------------------------------------------------------------------

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        step = self.ctx.step
        wrapped = wrap_closure(args, kwargs, after=lambda: self._guarded(self._measure_step, step, True))
        if wrapped is None:
            self._guarded(self._measure_step, step, True)
        return wrapped

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._guarded(self._finish_sampled)
        self._guarded(self._finish_trace)

    def on_step_end(self, step: int) -> None:
        if self.ctx.optimizer is None:
            self._guarded(self._measure_step, step, False)
        self._guarded(self._drain)

    def detach(self) -> None:
        super().detach()
        if self._scaler_hooked:
            self._scaler_hooked = False
            grad_scaler.uninstall()
        self._sampled = None
        self._pre_clip = None
        self._guarded(self._finish_trace)
        self._guarded(self._drain, True)
        self._pending.clear()
        if self._welford is not None:
            self._welford.clear()

    def _guarded(self, fn: Any, *args: Any) -> None:
        if self._failed:
            return
        try:
            with torch.no_grad():
                fn(*args)
        except Exception as exc:  # a recording problem must never reach the training loop
            self._failed = True
            self._sampled = None
            self.switch_off(exc, getattr(fn, "__qualname__", "a measurement"))

    # ---- measuring ---------------------------------------------------------------------------

    def _present(self) -> tuple[tuple[int, ...], list[torch.Tensor]]:
        """Indices of the parameters holding a dense gradient, and those gradients (local shards)."""
        grads_all = [p.grad for p in self._params]
        present = tuple([i for i, g in enumerate(grads_all) if g is not None and not g.is_sparse])
        return present, [local(grads_all[i]) for i in present]

    def _measure_backward(self) -> None:
        """At the end of a backward pass: the per-tensor norms before the loop can clip them."""
        present, grads = self._present()
        if not present:
            self._pre_clip = None
            return
        norms_P = norms(grads)
        scale = grad_scaler.active_scale()
        if scale is not None:  # the gradients are still multiplied by the loss scale
            self._scaled = True
            norms_P = norms_P / scale.to(device=norms_P.device, dtype=norms_P.dtype, non_blocking=True).reshape(())
        self._pre_clip = _PreClip(present, norms_P)

    def _measure_step(self, step: int, with_update: bool) -> None:
        if self._sampled is not None:  # the last sampled step's post-hook never came: record it without its update
            self._sampled.before = None
            self._finish_sampled()
        self._finish_trace()             # nor its trace's
        pre, self._pre_clip = self._pre_clip, None
        present, grads = self._present()
        if not present:
            return
        self._update_due = with_update and self._sketch is not None
        if self._update_due:
            self._sketch.before(present)
        norms_P = norms(grads)
        pre_norms_P = pre.norms_P.to(norms_P.dtype) if pre is not None and pre.present == present else None
        m = _Measured(step, present, norms_P, pre_norms_P)
        if self.ctx.sampling.due(self.name, step):
            m.layout = self._layout(present, norms_P.device)
            m.sums = param_sums(grads)
            if isinstance(self._welford, ElementWelford):
                m.m2k_P = self._welford.update(present, grads)
            if with_update:
                m.before = torch._foreach_mul([local(self._params[i]) for i in present], 1.0)
                m.weight_norms_P = norms(m.before)
                self._sampled = m
                return
        self._record(m)

    def _finish_sampled(self) -> None:
        m, self._sampled = self._sampled, None
        if m is None:
            return
        if m.before is not None:
            torch._foreach_sub_(m.before, [local(self._params[i]) for i in m.present])
            m.delta_norms_P, m.before = norms(m.before), None
        self._record(m)

    def _record(self, m: _Measured) -> None:
        """Make shard values whole (one collective under FSDP2), then record the step."""
        if self._shards.active:
            self._combine(m)
        norms_P = m.norms_P
        applied = torch.linalg.vector_norm(norms_P).reshape(1)
        rec = self.ctx.recorder
        if m.pre_norms_P is not None:
            total = torch.linalg.vector_norm(m.pre_norms_P).reshape(1)
            coef = torch.where(total == 0, torch.ones_like(total), applied / total)  # NaN stays NaN
            host = to_host(torch.cat([total, m.pre_norms_P, applied, coef]))
            n = len(m.present)
            rec.scalars({"grad_norm/global": HostSlice(host, 0), "grad_norm/applied": HostSlice(host, n + 1),
                         "grad_norm/clip_coef": HostSlice(host, n + 2)}, step=m.step)
        else:
            host = to_host(torch.cat([applied, norms_P]))
            rec.scalar("grad_norm/global", HostSlice(host, 0), step=m.step)
        self._pending.push((m.step, m.present), host)
        layout = m.layout or self._layout(m.present, norms_P.device)
        self._trace = (m.step, m.present, layout, layout.root_sum_sq(m.pre_norms_P if m.pre_norms_P is not None else norms_P))
        if not self._update_due:
            self._finish_trace()
        if m.layout is None:
            return
        if m.m2k_P is not None:
            noise_G = ElementWelford.group_noise(layout, m.m2k_P)
        else:
            noise_G = self._welford.update(layout, layout.root_sum_sq(norms_P))
        stats_G6 = group_stats(layout, norms_P, m.sums, noise_G)
        ratio_G = None
        if m.delta_norms_P is not None:
            ratio_G = layout.root_sum_sq(m.delta_norms_P) / layout.root_sum_sq(m.weight_norms_P)
        self._submit(m.step, layout, stats_G6, ratio_G)

    def _finish_trace(self) -> None:
        """Record the held step's `layer_trace` rows: per group, the gradient norm (before clipping when
        measured) and the update/weight ratio the sketch estimated (null without an optimizer step)."""
        trace, self._trace = self._trace, None
        update = self._sketch.after() if self._sketch is not None and self._update_due else None
        self._update_due = False
        if trace is None:
            return
        step, present, layout, grad_G = trace
        cols: dict[str, Any] = {"name": layout.names}
        if update is not None and update[0] == present:
            _, delta_P, weight_P = update
            ratio_G = layout.root_sum_sq(delta_P.to(grad_G.dtype)) / layout.root_sum_sq(weight_P.to(grad_G.dtype))
            host = to_host(torch.stack([grad_G, ratio_G], dim=1))
            cols["update_ratio"] = HostSlice(host, (slice(None), 1), np.float64)
        else:
            host = to_host(grad_G[:, None])
            cols["update_ratio"] = None
        cols["grad_norm"] = HostSlice(host, (slice(None), 0), np.float64)
        self.ctx.recorder.submit("layer_trace", cols, rows=len(layout.names), step=step)

    def _combine(self, m: _Measured) -> None:
        """Replace `m`'s shard values by whole-tensor ones; the same columns on every rank."""
        pre = m.pre_norms_P if m.pre_norms_P is not None else m.norms_P  # a placeholder keeps the shape
        cols = [m.norms_P, pre]
        if m.delta_norms_P is not None:
            cols += [m.weight_norms_P, m.delta_norms_P]
        sums: list[torch.Tensor] = []
        maxes: list[torch.Tensor] = []
        if m.sums is not None:
            sums = [m.sums[0], m.sums[2]] + ([m.m2k_P] if m.m2k_P is not None else [])
            maxes = [m.sums[1]]
        cols, sums, maxes = self._shards.combine(m.present, cols, sums, maxes)
        m.norms_P = cols[0]
        m.pre_norms_P = cols[1] if m.pre_norms_P is not None else None
        if m.delta_norms_P is not None:
            m.weight_norms_P, m.delta_norms_P = cols[2], cols[3]
        if m.sums is not None:
            m.sums = (sums[0], maxes[0], sums[1])
            if m.m2k_P is not None:
                m.m2k_P = sums[2]

    def _layout(self, present: tuple[int, ...], device: torch.device) -> GroupLayout:
        layout = self._layouts.get(present)
        if layout is None or layout.index_P.device != device:
            if len(self._layouts) > 16:
                self._layouts.clear()
            layout = GroupLayout.build(present, self._group_of, self._group_names,
                                       [p.numel() for p in self._params], device)
            self._layouts[present] = layout
        return layout

    def _submit(self, step: int, layout: GroupLayout, stats_G6: torch.Tensor, ratio_G: torch.Tensor | None) -> None:
        mat = stats_G6 if ratio_G is None else torch.cat([stats_G6, ratio_G[:, None].to(stats_G6.dtype)], dim=1)
        host = to_host(mat)
        cols: dict[str, Any] = {"name": layout.names}
        for c, key in enumerate(STATS):
            cols[key] = HostSlice(host, (slice(None), c), np.float64)
        cols["update_ratio"] = None if ratio_G is None else HostSlice(host, (slice(None), len(STATS)), np.float64)
        self.ctx.recorder.submit("grad_stats", cols, rows=len(layout.names), step=step)

    # ---- anomalies (host side, one step late at most) ----------------------------------------

    def _drain(self, wait: bool = False) -> None:
        for (step, present), values in self._pending.drain(wait):
            self._evaluate(step, np.asarray(values, dtype=np.float64), present)

    def _evaluate(self, step: int, values: np.ndarray, present: tuple[int, ...]) -> None:
        total, norms = float(values[0]), values[1:len(present) + 1]
        bad = np.flatnonzero(~np.isfinite(norms))
        if bad.size:
            self._vanishing = 0
            pname = self._names[present[int(bad[-1])]]
            overflow = " under fp16 loss scaling: the GradScaler skips this step and lowers its scale" \
                if self._scaled else ""
            self.ctx.report("nonfinite_grad", f"non-finite gradient at step {step} in {pname} (first in backward "
                                              f"order; {bad.size} tensor(s) affected){overflow}",
                            module=_owner(pname), severity="warning" if self._scaled else "error", value=total,
                            step=step)
            return
        self._evaluated += 1
        z, median = self._baseline.score(total)  # (0, NaN) until 20 healthy norms were seen
        if z > EXPLODE_Z and total > EXPLODE_RATIO * median:
            top = int(np.argmax(norms))
            pname = self._names[present[top]]
            share = float(norms[top] ** 2 / total ** 2) if total > 0 else float("nan")
            self.ctx.report("exploding_grad", f"gradient norm {total:.4g} (before clipping) at step {step} is "
                                              f"{total / median:.0f}x the healthy median (robust z = {z:.0f}); "
                                              f"largest: {pname} ({share:.0%} of the squared norm)",
                            module=_owner(pname), value=total, step=step)
        else:
            self._baseline.add(total)
        if self._evaluated > WARMUP_STEPS and total < VANISH_NORM:
            self._vanishing += 1
            if self._vanishing == VANISH_STEPS:
                self.ctx.report("vanishing_grad", f"gradient norm below {VANISH_NORM:g} for {VANISH_STEPS} steps "
                                                  f"in a row (step {step}: {total:.3g})", value=total, step=step)
        else:
            self._vanishing = 0


def _owner(pname: str) -> str:
    """The module that owns parameter `pname` ("layers.0.ffn.w2.weight" -> "layers.0.ffn.w2")."""
    return pname.rpartition(".")[0] or pname
