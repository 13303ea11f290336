"""The timing probe: forward/backward time per block and in total, optimizer and data time per step.

Clock: on a CUDA model, `torch.cuda.Event(enable_timing=True)` recorded on the current stream in
the hooks, resolved (`synchronize` + `elapsed_time`) by the Recorder's writer thread, so every
phase is measured on the GPU's timeline and the training thread never waits. On CPU,
`time.perf_counter()`.

Hooks: forward pre/post hooks on the root module and on every block (`find_blocks`: the shallowest
list of repeated modules, a transformer's layers, not an MoE layer's experts); for backward,
*tensor* hooks: the first gradient arriving at a module's outputs starts its backward, the last one
leaving through its (non-leaf) inputs ends it; a module with no such input (the root, whose inputs
are token ids) ends when the backward pass ends (`queue_callback` on the autograd engine). Tensor
hooks are used instead of `register_full_backward_hook`, which wraps inputs/outputs in a custom
Function and then breaks in-place ops (`nn.ReLU(inplace=True)` after a hooked module raises).
Optimizer time comes from the optimizer's step pre/post hooks (when `watch(optimizer=...)`); a
closure given to the step (Lightning) is left out of it.
A forward that runs inside backward (activation-checkpoint recomputation) is not forward time: it
is part of the model's backward, and of the block's backward with non-reentrant checkpointing
(recomputed inside the block's backward); with reentrant checkpointing the block's backward is
its inner backward pass, after the recomputation (its hooks are set up on the recomputed call).
Several forwards/backwards per step (gradient accumulation) add up; overlapping intervals of one
row (two forwards whose losses are summed into one backward) are merged, not counted twice.

Evaluation is its own phase, not training time. A forward of the root module is *eval* when
- it runs inside `Watch.phase("eval")` (the explicit API, for loops whose eval is not detectable), or
- gradients are disabled (`torch.no_grad()`/`inference_mode()`) outside a backward pass, or
- the root is in eval mode (`model.eval()`) and no gradient reached its outputs before the step
  ended (a loop that trains with `model.eval()`, e.g. to switch dropout off, stays training time;
  outputs the probe cannot hook count as training).
Block forwards take the class of the root forward they run in; a block called outside one (a
LightningModule's `training_step` calls its layers, not its `forward`) is eval by the explicit
phase or `no_grad`, and then the blocks stand in for the root below. Eval forwards in a row (no
training forward between them) make one eval span, from the first one's start to the last one's
end, so the loss computation between eval batches is in it; an explicit phase is a span from
entry to exit.
In a step that also trains, eval spans are left out of the model's and blocks' forward, of data,
of other and of total, and recorded as `model`/`eval`. A step with no training forward (an
inference loop under `no_grad`, with no explicit phase) is timed as before: its forwards are the
step's forward. The engine trainer, Hugging Face's and Lightning's loops evaluate after a step's
optimizer step, so their eval is filed with the next step (whose interval it ran in); an eval after
the last step belongs to no step and is not recorded.

torch.compile: hook bodies never run inside a compiled graph (each returns at once while dynamo
traces it, reading no Python state, so it adds no graph break, no op and no recompile). The
root's hooks are wrapped in `torch._dynamo.disable`: for `watch` before `torch.compile(model)`,
`watch(torch.compile(model))` and `model.compile()` they are the compiled region's boundary and
run eagerly there (no break), so the model's forward and backward, the optimizer, data, other and
total are measured as usual; block rows are left out (said once in the log).

Records, kind `timing`, at every step `ctx.sampling.due("timing", step)` selects (default every
step), one `submit` per step, all `ms` in milliseconds:
- name = <block name>, phase "forward" / "backward": each block (e.g. "layers.3").
- name "model", phase "forward" / "backward": the root module's forward, and the whole backward
  pass (from the first gradient at the model's outputs to the end of the pass).
- name "optimizer", phase "optimizer": `optimizer.step()` (row absent without an optimizer).
- name "data", phase "data": from the end of the previous step (`on_step_end`) to the first
  training forward of this step, less eval spans (row absent on the first recorded step, which
  has no previous end).
- name "step", phase "other": total − model forward − model backward − optimizer − data, clamped
  at 0 (loss computation, `zero_grad`, time between micro-batches, the user's own code).
- name "step", phase "total": the step's wall time, from the previous step's end (first recorded
  step: from its first training forward) to this step's end, less eval spans. (A root that is
  never called: the first block's first training forward stands in for the root's.)
- name "model", phase "eval": the union of the eval spans since the previous step's end (row
  present only on steps with an eval; not a part of total).
The dashboard stacks model/forward + model/backward + optimizer + data + step/other = step/total.
On CPU, where Linux tells (`inspector.sysmon.run_queue`), each mark also reads how long the marking
thread has waited for a CPU, and the step's rows add, name "cpu_wait": phases "cpu_wait_forward",
"cpu_wait_backward", "cpu_wait_optimizer", "cpu_wait_data" (the same intervals as the model, optimizer
and data rows) and "cpu_wait" (the whole step): the part of those ms the training thread was runnable
but another process held its CPU.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np
import torch
from torch import nn

from inspector.probes.base import Probe, ProbeContext
from inspector.probes.closure import wrap_closure
from inspector.probes.model_map import find_blocks
from inspector.probes.registry import register_probe
from inspector.sysmon.run_queue import run_queue_wait_s

log = logging.getLogger("inspector")

Mark = Union[tuple[float, float], "torch.cuda.Event"]
"""CPU: (perf_counter s, run-queue wait s of the marking thread); CUDA: a timing event."""
CPU_WAIT_NAME = "cpu_wait"
"""`timing` rows of CPU waits: name "cpu_wait", phase "cpu_wait" (whole step) or "cpu_wait_<phase>"."""
Interval = tuple[Mark, Mark]


def _in_backward() -> bool:
    """True inside an autograd backward pass (e.g. an activation-checkpoint recompute)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def _queue_at_backward_end(fn: Callable[[], None]) -> None:
    """Run `fn` when the current backward pass ends (after all gradients are accumulated)."""
    torch.autograd.Variable._execution_engine.queue_callback(fn)


def _grad_tensors(obj: Any, depth: int = 2) -> list[torch.Tensor]:
    """Tensors requiring grad in a module's inputs/outputs (tensor, tuple/list, dict), 2 levels deep."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.requires_grad else []
    if depth == 0:
        return []
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return [t for x in obj for t in _grad_tensors(x, depth - 1)]
    return []


@dataclass
class _BackwardCall:
    """One forward call of a module whose backward we time: from its outputs' first gradient to
    its inputs' last one (or to the end of the backward pass when no input carries a gradient)."""

    timed: "_Timed"
    clock: "_Clock"
    has_inputs: bool
    start: Mark | None = None
    end: Mark | None = None
    hooked: bool = False     # a gradient hook sits on one of its outputs
    used: bool = False       # a gradient reached its outputs: this forward was trained through
    guard: Callable[[Callable, str], Callable] = lambda fn, where: fn  # the probe's `Probe.guard`

    def output_grad(self) -> None:
        """First gradient at the outputs: backward of this call starts."""
        self.used = True
        if self.start is not None:
            return
        self.start = self.clock.mark()
        if not self.has_inputs:
            _queue_at_backward_end(self.guard(self.input_grad, "end-of-backward callback (timing)"))
        _queue_at_backward_end(self.guard(self.finish, "end-of-backward callback (timing)"))

    def input_grad(self) -> None:
        """A gradient left through an input (the last one wins)."""
        self.end = self.clock.mark()

    def finish(self) -> None:
        """End of the backward pass: file the interval with the module."""
        if self.start is not None and self.end is not None:
            self.timed.backward.append((self.start, self.end))
            self.start = self.end = None


@dataclass
class _Mode:
    """Why a root forward (and the block forwards inside it) may be evaluation; see the docstring."""

    explicit: bool = False                # inside `Watch.phase("eval")`
    no_grad: bool = False                 # gradients disabled, outside a backward pass
    eval_call: _BackwardCall | None = None  # root in eval mode, grad on: eval unless trained through

    def detected(self) -> bool:
        """Eval by the automatic rules (grad off, or eval mode and no gradient reached the outputs)."""
        call = self.eval_call
        return self.no_grad or (call is not None and call.hooked and not call.used)

    def is_eval(self, step_trained: bool) -> bool:
        """Eval in a step that trained (`step_trained`) or not (then only an explicit phase is eval)."""
        return self.explicit or (step_trained and self.detected())


Forward = tuple[Mark, Mark, _Mode]


class _Clock:
    """Timestamps: perf_counter seconds (and the run-queue wait) on CPU, timing events on the model's
    CUDA device; `waits` is the same clock read on the run-queue-wait timeline (CPU only)."""

    def __init__(self, device: torch.device | None = None, *, part: int = 0) -> None:
        self.cuda = device is not None and device.type == "cuda"
        self.device = device
        self.part = part

    def waits_of(self, m: Mark) -> "_Clock | None":
        """This clock on the run-queue-wait timeline (`since` gives ms waited for a CPU), when mark `m`
        holds a wait (None on CUDA, or where the marking thread could not read it)."""
        if self.cuda or math.isnan(m[1]):
            return None
        return _Clock(self.device, part=1)

    def mark(self) -> Mark:
        """A timestamp now (on CUDA: recorded on this thread's current stream of the model's device)."""
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            return ev
        return (time.perf_counter(), run_queue_wait_s())

    def since(self, ref: Mark, m: Mark) -> float:
        """Milliseconds from `ref` to `m` (waits for CUDA events: call off the training thread)."""
        if self.cuda:
            m.synchronize()
            ref.synchronize()
            return float(ref.elapsed_time(m))
        return (m[self.part] - ref[self.part]) * 1000.0


@dataclass
class _StepTimes:
    """One step's intervals; `resolve()` turns them into the `ms` column."""

    clock: _Clock
    ref: Mark
    end: Mark
    rows: list[tuple[str, str, list[Interval]]]
    parts: list[int]            # rows that "other" is total minus (model, optimizer, data)
    other: int
    total: int
    data: int | None = None     # the data row: its one interval less the eval spans in it
    eval_spans: list[Interval] = field(default_factory=list)
    waits: dict[int, int] = field(default_factory=dict)   # CPU-wait row -> the row it measures (-1: total)

    def resolve(self) -> np.ndarray:
        """ms per row; eval spans are taken out of data and total, "other" is total minus the parts."""
        ms = np.array([_union_ms(self.clock, self.ref, iv) for _, _, iv in self.rows], dtype=np.float64)
        span = self.clock.since(self.ref, self.end)
        total = span - _union_ms(self.clock, self.ref, self.eval_spans, 0.0, span)
        if self.data is not None:
            a, b = (self.clock.since(self.ref, m) for m in self.rows[self.data][2][0])
            ms[self.data] = max(b - a - _union_ms(self.clock, self.ref, self.eval_spans, a, b), 0.0)
        ms[self.total] = total
        ms[self.other] = max(total - sum(ms[i] for i in self.parts), 0.0)
        wait = self.clock.waits_of(self.end) if self.waits else None
        for row, of in self.waits.items():
            if wait is not None:     # within [0, the row it is part of]: marks of another thread count nothing
                waited = wait.since(self.ref, self.end) if of < 0 else _union_ms(wait, self.ref, self.rows[of][2])
                ms[row] = min(max(waited, 0.0), ms[self.total if of < 0 else of])
        return ms


def _union_ms(clock: _Clock, ref: Mark, intervals: list[Interval], lo: float = -math.inf,
              hi: float = math.inf) -> float:
    """Length in ms of the union of intervals (overlaps count once), clipped to [lo, hi] ms after `ref`."""
    spans = []
    for a, b in intervals:
        t0 = clock.since(ref, a)
        t1 = max(t0, clock.since(ref, b))
        t0, t1 = max(t0, lo), min(t1, hi)
        if t1 > t0:
            spans.append((t0, t1))
    if not spans:
        return 0.0
    spans.sort()
    total, cur_a, cur_b = 0.0, spans[0][0], spans[0][1]
    for a, b in spans[1:]:
        if a > cur_b:
            total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    return total + cur_b - cur_a


class _Timed:
    """Forward and backward intervals of one module (a block, or the root) during the current step."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.forward: list[Forward] = []
        self.backward: list[Interval] = []
        self.stack: list[tuple[Mark | None, _BackwardCall | None, _Mode | None]] = []
        self.recompute: list[tuple[Mark | None, _BackwardCall | None, _Mode | None]] = []

    def reset(self) -> None:
        """Forget the step's intervals (open forward calls stay open; recomputes that stopped early go)."""
        self.forward, self.backward = [], []
        self.recompute.clear()

    def training_forward(self, step_trained: bool) -> list[Interval]:
        """This step's forward intervals that are not eval."""
        return [(a, b) for a, b, mode in self.forward if not mode.is_eval(step_trained)]


def _eval_spans(forwards: list[Forward], step_trained: bool) -> list[Interval]:
    """Root forwards in a row that are eval, each run as one span (first start to last end)."""
    spans: list[Interval] = []
    run_start: Mark | None = None
    run_end: Mark | None = None
    for a, b, mode in forwards:
        if mode.is_eval(step_trained):
            run_start = a if run_start is None else run_start
            run_end = b
        elif run_start is not None:
            spans.append((run_start, run_end))
            run_start = None
    if run_start is not None:
        spans.append((run_start, run_end))
    return spans


@register_probe
class TimingProbe(Probe):
    """Per-step time split into forward / backward / optimizer / data / other, and eval on its own;
    see the module docstring."""

    name = "timing"
    kinds = ("timing",)

    def __init__(self) -> None:
        super().__init__()
        self.clock = _Clock()
        self.root = _Timed("model")
        self.blocks: list[_Timed] = []
        self.optimizer: list[Interval] = []
        self.phase_spans: list[Interval] = []     # explicit `Watch.phase("eval")` spans of this step
        self._phase_depth = 0
        self._phase_start: Mark | None = None
        self._opt_start: Mark | None = None
        self._prev_end: Mark | None = None
        self._active = False
        self._warned = False
        self._compiled = False      # a block hook was traced by torch.compile (set from inside the graph)
        self._said_compiled = False

    def attach(self, ctx: ProbeContext) -> str | None:
        """Hook the root, the blocks and the optimizer."""
        self.ctx = ctx
        param = next(ctx.model.parameters(), None)
        self.clock = _Clock(None if param is None else param.device)
        self._active = ctx.sampling.due(self.name, ctx.step)
        self._hook_module(ctx.model, self.root, root=True)
        for name, block in find_blocks(ctx.model):
            if block is ctx.model:
                continue
            timed = _Timed(name)
            self.blocks.append(timed)
            self._hook_module(block, timed, root=False)
        if ctx.optimizer is not None:
            self.track(ctx.optimizer.register_step_pre_hook(self._optimizer_pre))
            self.track(ctx.optimizer.register_step_post_hook(self._optimizer_post))
        return None

    # ---- explicit phases (`Watch.phase`) -------------------------------------------------------

    def begin_phase(self, name: str) -> None:
        """An explicit eval phase starts: forwards until `end_phase` are eval (phases may nest)."""
        self._phase_depth += 1
        if self._phase_depth == 1 and self._active:
            self._phase_start = self.clock.mark()

    def end_phase(self, name: str) -> None:
        """The explicit eval phase ends: its span is filed with the current step."""
        self._phase_depth = max(self._phase_depth - 1, 0)
        if self._phase_depth == 0:
            if self._active and self._phase_start is not None:
                self.phase_spans.append((self._phase_start, self.clock.mark()))
            self._phase_start = None

    # ---- hooks (training thread and autograd threads) -----------------------------------------

    def _mode(self, module: nn.Module, root: bool, call: _BackwardCall | None) -> _Mode:
        """How a root forward (or a block forward outside one) is classed."""
        no_grad = not torch.is_grad_enabled()
        eval_call = call if root and not module.training else None
        return _Mode(explicit=self._phase_depth > 0, no_grad=no_grad, eval_call=eval_call)

    def _hook_module(self, module: nn.Module, timed: _Timed, root: bool) -> None:
        def pre(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            if torch.compiler.is_compiling():  # traced into a compiled graph: see "torch.compile" above
                self._compiled = True
                return
            if not self._active:
                return
            try:
                recompute = _in_backward()
                now = None if recompute else self.clock.mark()
                call = None
                if torch.is_grad_enabled():
                    inputs = [] if root else [t for t in _grad_tensors((args, kwargs)) if t.grad_fn is not None]
                    call = _BackwardCall(timed, self.clock, bool(inputs), guard=self.guard)
                    on_input = self.guard(lambda g, c=call: c.input_grad(), "gradient hook on a block input (timing)")
                    for t in inputs:
                        t.register_hook(on_input)
                if recompute:
                    mode = None
                elif not root and self.root.stack:      # a block takes the class of the root forward
                    mode = self.root.stack[-1][2]
                else:
                    mode = self._mode(mod, root, call)
                (timed.recompute if recompute else timed.stack).append((now, call, mode))
            except Exception as exc:
                self._warn(exc)

        def post(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if torch.compiler.is_compiling():
                return
            if not self._active:
                return
            recompute = _in_backward()
            stack = timed.recompute if recompute else timed.stack
            if not stack:
                return
            try:
                start, call, mode = stack.pop()
                if not recompute:
                    timed.forward.append((start, self.clock.mark(), mode or _Mode()))
                if call is not None:
                    outputs = _grad_tensors(out)
                    on_output = self.guard(lambda g, c=call: c.output_grad(), "gradient hook on a block output (timing)")
                    for t in outputs:
                        t.register_hook(on_output)
                    call.hooked = call.hooked or bool(outputs)
            except Exception as exc:
                self._warn(exc)

        if root:  # the root's hooks are the compiled region's boundary: always run them eagerly
            pre, post = torch._dynamo.disable(pre), torch._dynamo.disable(post)
        self.track(module.register_forward_pre_hook(pre, with_kwargs=True))
        self.track(module.register_forward_hook(post, with_kwargs=True))

    def _optimizer_pre(self, optimizer: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not self._active:
            return None
        self._opt_start = self.clock.mark()
        # With a closure, forward and backward run inside the step: they are not optimizer time.
        return wrap_closure(args, kwargs, before=self._optimizer_post, after=self._optimizer_resume)

    def _optimizer_resume(self) -> None:
        self._opt_start = self.clock.mark()

    def _optimizer_post(self, *_: Any) -> None:
        if self._active and self._opt_start is not None:
            self.optimizer.append((self._opt_start, self.clock.mark()))
            self._opt_start = None

    # ---- step end -------------------------------------------------------------------------------

    def on_step_end(self, step: int) -> None:
        """Submit this step's rows (if due) and start timing the next one."""
        if self.ctx is None:
            return
        next_active = self.ctx.sampling.due(self.name, step + 1)
        try:
            if self._active:
                end = self.clock.mark()
                times = self._collect(end)
                if times is not None:  # `ms` is resolved on the writer thread (CUDA events wait there)
                    self.ctx.recorder.submit("timing", {"name": [r[0] for r in times.rows],
                                                        "phase": [r[1] for r in times.rows], "ms": times},
                                             len(times.rows), step=step)
                self._prev_end = end if next_active else None
            elif next_active:
                self._prev_end = self.clock.mark()
        except Exception as exc:
            self._warn(exc)
            self._prev_end = None
        finally:
            self._reset()
            self._active = next_active

    def _collect(self, end: Mark) -> _StepTimes | None:
        # A root that is never called (Lightning calls `training_step`, not `forward`): the blocks tell.
        timed = [self.root] if self.root.forward else [b for b in self.blocks if b.forward]
        trained = any(not mode.detected() and not mode.explicit for t in timed for _, _, mode in t.forward)
        first = next((iv[0] for t in timed for iv in t.training_forward(trained)[:1]), None)
        ref = self._prev_end if self._prev_end is not None else first
        if ref is None:
            return None
        rows: list[tuple[str, str, list[Interval]]] = []
        if self._compiled:
            self._say_compiled()
        for b in ([] if self._compiled else self.blocks):
            rows.append((b.name, "forward", b.training_forward(trained)))
            rows.append((b.name, "backward", b.backward))
        parts = [len(rows), len(rows) + 1]
        rows += [("model", "forward", self.root.training_forward(trained)), ("model", "backward", self.root.backward)]
        if self.ctx is not None and self.ctx.optimizer is not None:
            parts.append(len(rows))
            rows.append(("optimizer", "optimizer", self.optimizer))
        data = None
        if self._prev_end is not None and first is not None:
            data = len(rows)
            parts.append(data)
            rows.append(("data", "data", [(self._prev_end, first)]))
        spans = (_eval_spans(timed[0].forward, trained) if timed else []) + self.phase_spans
        if spans:
            rows.append(("model", "eval", spans))
        rows += [("step", "other", []), ("step", "total", [])]
        other, total = len(rows) - 2, len(rows) - 1
        waits = {}
        if self.clock.waits_of(end) is not None:
            for i in parts:
                waits[len(rows)] = i
                rows.append((CPU_WAIT_NAME, f"{CPU_WAIT_NAME}_{rows[i][1]}", []))
            waits[len(rows)] = -1
            rows.append((CPU_WAIT_NAME, CPU_WAIT_NAME, []))
        return _StepTimes(self.clock, ref, end, rows, parts, other=other, total=total,
                          data=data, eval_spans=spans, waits=waits)

    def _say_compiled(self) -> None:
        if not self._said_compiled:
            self._said_compiled = True
            log.warning("inspector: timing: the model runs under torch.compile; per-block forward/backward times "
                        "are not measured inside the compiled region (the model's forward and backward are timed "
                        "at its boundary)")

    def _reset(self) -> None:
        for t in (self.root, *self.blocks):
            t.reset()
        self.optimizer = []
        self.phase_spans = []

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning("inspector: timing probe skipped a measurement: %r", exc)

    def detach(self) -> None:
        """Remove every hook."""
        super().detach()
        self._reset()
        for t in (self.root, *self.blocks):
            t.stack.clear()
