"""`ExpertsProbe`: hooks the routers, keeps each step's sums, records and judges them (see the package
docstring)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from inspector.probes.base import Probe, ProbeContext
from inspector.probes.experts.load import ForwardLoads, _Acc, _add_counts, _count_all, _StepLoad
from inspector.probes.experts.phases import (DECODE, FORWARD_END_KEY, INFERENCE, KIND_OF_PHASE, PREFILL, STAGE_KEY,
                                             TRAIN, fresh_sums)
from inspector.probes.experts.routers import (EXACT_COUNT_DTYPES, LOAD_BUFFER, RouterInfo, find_routers, load_keeping,
                                              parse_router_output, router_indices, token_entropy_sum)
from inspector.probes.experts.streaks import HOT_FACTOR, _RouterStreaks, _Streak, hot_flags
from inspector.probes.registry import register_probe
from inspector.probes.switchable import SwitchableHooks

log = logging.getLogger("inspector")

@dataclass
class _Undecided:
    """An eval-mode forward with autograd on: training if a gradient reaches the router's output
    before the step ends, else inference."""

    info: RouterInfo
    acc: _Acc
    trained: list[bool] = field(default_factory=lambda: [False])



def _grad_tracked(out: Any) -> torch.Tensor | None:
    """The first floating-point tensor of a router's output that autograd tracks, or None."""
    tensors = [out] if isinstance(out, torch.Tensor) else list(out) if isinstance(out, (tuple, list)) else []
    return next((t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad),
                None)


_is_compiling = torch.compiler.is_compiling


def _in_backward() -> bool:
    """True inside an autograd backward pass (an activation-checkpoint recompute)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


@register_probe
class ExpertsProbe(Probe):
    """Expert load per MoE layer; see the module docstring."""

    name = "experts"
    kinds = ("expert_load", "expert_load_inference", "anomaly")

    def __init__(self) -> None:
        super().__init__()
        self.routers: list[RouterInfo] = []
        self._acc: dict[str, dict[str, _Acc]] = fresh_sums()
        self._undecided: list[_Undecided] = []
        self._pending: list[_StepLoad] = []
        self._streak: dict[tuple[str, str, int], _RouterStreaks] = {}
        self._trained = False          # a training row was recorded: inference is no longer judged
        self._eval_depth = 0           # inside `Watch.phase("eval")`
        self._warned = False
        self._traced = False           # a router hook ran inside a torch.compile trace
        self._said_traced = False
        self._keeping: list[RouterInfo] = []   # routers read from their own load buffer (see `_forward_ended`)
        self._kept_hooks: SwitchableHooks | None = None
        self._kept_names: frozenset[str] = frozenset()
        self._verified = False         # every kept router ran once in a hooked forward: its buffer is that forward's
        self._calls: dict[str, int] = {}   # kept routers' calls in the forward running (while hooked)
        self._stage_load: dict[str, ForwardLoads] = {}   # stage -> `_keeping`'s rows

    def attach(self, ctx: ProbeContext) -> str | None:
        """Hook every router; a reason when the model has none."""
        self.ctx = ctx
        self.routers = find_routers(ctx.model)
        if not self.routers:
            return "no MoE routers found (engine Router, *Router classes or gate/router next to experts)"
        listeners = ctx.shared.get(FORWARD_END_KEY)
        self._keeping = load_keeping(self.routers) if isinstance(listeners, list) else []
        self._kept_names = frozenset(info.name for info in self._keeping)
        for info in self.routers:
            if info.name not in self._kept_names:
                self.track(info.module.register_forward_hook(self._hook(info)))
        if self._keeping and isinstance(listeners, list):
            self._kept_hooks = SwitchableHooks(self, [(info.module, self._counted(self._hook(info), info.name))
                                                      for info in self._keeping])
            self._kept_hooks.switch(True)       # on until a hooked forward shows every router runs once
            self.track(self._kept_hooks)
            listeners.append(self.guard(self._forward_ended, "expert load after a forward"))
        return None

    def _counted(self, hook: Callable[[nn.Module, Any, Any], None], name: str) -> Callable[[nn.Module, Any, Any], None]:
        """`hook`, counting the router's calls in the forward running (`_forward_ended` checks them)."""
        calls = self._calls

        def counted(module: nn.Module, args: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if self._verified and name in self._kept_names and not self.due_now():
                return                  # the rest of the first step: the buffer counts this forward
            hook(module, args, out)
        return counted

    def _forward_ended(self, stage: Any) -> None:
        """An inference-mode watch's forward of `stage` is done; the load of the routers that keep
        their last forward's tokens per expert (`load_keeping`) is added to the stage's window sums
        from their buffers, one stack for all of them (`ForwardLoads`). Their hooks are on only for the
        first forward (which counts its ids itself and checks that every such router runs once per
        forward, as its buffer holds only its last call) and the steps this probe records (router
        entropy, and the same check); the other forwards run on torch's fast path. A router that ran
        other than once, or buffers cast to another dtype, turn the buffers off for good: the hooks stay
        on and count the ids."""
        keeping = self._keeping
        if not keeping:
            return
        stop = ""
        if self._kept_hooks is not None and self._kept_hooks.on:
            counted = [self._calls.get(info.name, 0) for info in keeping]
            self._calls.clear()
            verified, bad = self._verified, any(n != 1 for n in counted)
            self._verified = verified or not bad
            if bad:
                stop = (f"a router ran {max(counted)} times in one forward"
                        + (" (this forward's counts hold its last call only)" if verified else ""))
            if not verified:            # the first forward: the hooks counted its ids
                if stop:
                    self._stop_keeping(stop)
                return
        if stage in (PREFILL, DECODE):
            buffers = [info.module._buffers[LOAD_BUFFER] for info in keeping]
            rows = self._stage_load.get(stage)
            if rows is None:
                rows = self._stage_load[stage] = ForwardLoads(buffers)
            dtype = buffers[0].dtype
            if dtype is not rows.dtype and not stop:         # the model was cast after watch() began
                stop = f"the routers' load buffers became {str(dtype).replace('torch.', '')}" + (
                    "" if dtype in EXACT_COUNT_DTYPES else ", which rounds counts above 256 (this forward's may be rounded)")
            rows.add([b.to(rows.dtype) for b in buffers] if stop else buffers)
        if stop:
            self._stop_keeping(stop)

    def _stop_keeping(self, why: str) -> None:
        """Count the kept routers' ids with their hooks from now on (`why` said once, as a warning);
        the load their buffers gave so far stays in this window's sums."""
        self._merge_kept_loads(self._acc)
        self._keeping, self._kept_names, self._stage_load = [], frozenset(), {}
        log.warning("inspector: experts: %s; the routers' load is counted from their hooks from now on", why)

    def begin_phase(self, name: str) -> None:
        """`Watch.phase("eval")` began: forwards inside are inference."""
        self._eval_depth += 1

    def end_phase(self, name: str) -> None:
        """`Watch.phase("eval")` ended."""
        self._eval_depth = max(self._eval_depth - 1, 0)

    def _hook(self, info: RouterInfo) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if _is_compiling():  # inside a compiled graph: record nothing, add nothing
                self._traced = True
                return
            ctx = self.ctx
            if not self.due_now():
                # a step this probe does not record: stage window sums count every token (the
                # rest is sampled). Every call of every router of a decode iteration comes here:
                # the fewest Python steps that keep the ids as of the call.
                sums = self._acc.get(ctx.shared.get(STAGE_KEY)) if ctx is not None else None  # PREFILL / DECODE
                if sums is None:
                    return
                try:                                                 # integer ids: no autograd to switch off
                    at = info.indices_at
                    t = out[at] if at is not None and type(out) is tuple else None
                    if type(t) is not torch.Tensor or t.dtype is not info.indices_dtype:
                        t = router_indices(out, info)
                    acc = sums.get(info.name)
                    if acc is None:
                        acc = sums[info.name] = _Acc()
                    _add_counts(info, t, acc)
                except Exception as exc:  # noqa: BLE001
                    self._warn(f"inspector: experts probe skipped a forward of {info.name}: "
                               f"{type(exc).__name__}: {exc}")
                return
            if _in_backward():
                return
            try:
                grad_on = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
                if grad_on:
                    with torch.no_grad():
                        self._record_forward(info, module, out, grad_on)
                else:                         # generation: autograd is off already
                    self._record_forward(info, module, out, grad_on)
            except Exception as exc:  # a recording problem must never break training
                self._warn(f"inspector: experts probe skipped a forward of {info.name}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return hook

    def _record_forward(self, info: RouterInfo, module: nn.Module, out: Any, grad_on: bool) -> None:
        """Add one forward to its phase's sums (an eval-mode forward with autograd on: decided later)."""
        if self._verified and info.name in self._kept_names:
            stage = self._inference_stage()
            if stage in (PREFILL, DECODE):   # an inference watch's forward: its load comes from the buffer
                self._accumulate(info, out, self._sums_of(stage, info.name), count_ids=False)
                return
        inference = self._eval_depth > 0 or (not module.training and not grad_on)
        if inference or module.training:
            phase = self._inference_stage() if inference else TRAIN
            self._accumulate(info, out, self._sums_of(phase, info.name))
            return
        tracked = _grad_tracked(out)
        if tracked is None:       # nothing a gradient could reach: not trained through
            self._accumulate(info, out, self._sums_of(self._inference_stage(), info.name))
            return
        forward = _Undecided(info, _Acc())
        self._accumulate(info, out, forward.acc)
        flag = forward.trained

        def reached(grad: torch.Tensor) -> None:
            flag[0] = True  # cannot raise; runs inside the user's backward
        guard = getattr(self, "guard", None)
        tracked.register_hook(guard(reached, f"{info.name} (gradient reached)") if callable(guard) else reached)
        self._undecided.append(forward)

    def _sums_of(self, phase: str, name: str) -> _Acc:
        """Router `name`'s sums of `phase` this step (made on its first forward)."""
        sums = self._acc[phase]
        acc = sums.get(name)
        if acc is None:
            acc = sums[name] = _Acc()
        return acc

    def _inference_stage(self) -> str:
        """PREFILL or DECODE while an inference-mode watch says so, else INFERENCE."""
        stage = self.ctx.shared.get(STAGE_KEY) if self.ctx is not None else None
        return stage if stage in (PREFILL, DECODE) else INFERENCE

    def _accumulate(self, info: RouterInfo, out: Any, acc: _Acc, count_ids: bool = True) -> None:
        scores_NE, indices_NK = parse_router_output(out, info)
        if indices_NK is None:
            return
        if count_ids:
            _add_counts(info, indices_NK, acc)
        if scores_NE is not None and scores_NE.shape[0] == indices_NK.shape[0]:
            ent = token_entropy_sum(scores_NE, info.scores)
            acc.entropy_sum = ent if acc.entropy_sum is None else acc.entropy_sum + ent
            acc.tokens += indices_NK.shape[0]
        aux = getattr(info.module, "aux_loss", None) if info.engine else None
        if isinstance(aux, torch.Tensor):
            aux = aux.detach().float().reshape(())
            acc.aux_sum = aux if acc.aux_sum is None else acc.aux_sum + aux
            acc.aux_n += 1

    def on_step_end(self, step: int) -> None:
        """Record the step's load per router and phase (one host copy per device and phase) and
        check for starvation."""
        if self.ctx is None:
            return
        if self._traced and not self._said_traced:
            self._said_traced = True
            log.warning("inspector: experts: the model runs under torch.compile; routers inside the compiled region "
                        "are not recorded (watch the eager model to record them)")
        try:
            if self._record(step):
                self._judge_loads()
        except Exception as exc:
            self._warn(f"inspector: experts probe could not record step {step}: {type(exc).__name__}: {exc}")
        if self._kept_hooks is not None and self._verified and self._keeping:
            self._kept_hooks.switch(self.ctx.sampling.due(self.name, step + 1))
        elif self._kept_hooks is not None:
            self._kept_hooks.switch(True)

    def _record(self, step: int, *, last: bool = False) -> bool:
        """Submit the sums gathered since the last step end at `step` (`last`: the probe is being
        detached, carried window sums are recorded whatever the step); True if the probe is live."""
        if self.ctx is None:
            return False
        if not self.ctx.sampling.due(self.name, step) and not last:
            # stage rows are window sums: they stay until the next record; nothing else is kept
            acc = self._acc
            if self._undecided or acc[TRAIN] or acc[INFERENCE]:
                stages = {phase: self._acc[phase] for phase in (PREFILL, DECODE)}
                self._take()
                self._acc.update(stages)
            return True
        acc = self._take()
        self._merge_kept_loads(acc)
        for phase in KIND_OF_PHASE:
            sums = acc[phase]
            present = [(r, sums[r.name]) for r in self.routers if r.name in sums]
            _count_all(present)
            items = [(r, a) for r, a in present if a.counts is not None]
            if not items:
                continue
            load = _StepLoad.pack(step, items, phase)
            self.ctx.recorder.submit(KIND_OF_PHASE[phase], load.columns(), len(load.rows), step=step)
            self._pending.append(load)
            self._trained = self._trained or phase == TRAIN
        return True

    def _merge_kept_loads(self, acc: dict[str, dict[str, _Acc]]) -> None:
        """Add the loads read from the routers' own buffers (`_forward_ended`) to the stage sums."""
        for stage, rows in self._stage_load.items():
            load_RE = rows.take()
            if load_RE is None:
                continue
            counts_RB = torch.nn.functional.pad(load_RE.round().long(), (0, 1))   # bin E: no invalid ids
            sums = acc[stage]
            for j, info in enumerate(self._keeping):
                a = sums.get(info.name)
                if a is None:
                    a = sums[info.name] = _Acc()
                a.counts = counts_RB[j] if a.counts is None else a.counts + counts_RB[j]

    def _take(self) -> dict[str, dict[str, _Acc]]:
        """The sums gathered so far, undecided forwards settled; the probe starts afresh."""
        acc, self._acc = self._acc, fresh_sums()
        undecided, self._undecided = self._undecided, []
        for fwd in undecided:
            phase = TRAIN if fwd.trained[0] else INFERENCE
            acc[phase].setdefault(fwd.info.name, _Acc()).merge(fwd.acc)
        return acc

    def _streaks_of(self, key: tuple[str, str, int]) -> _RouterStreaks:
        """The stretch state of (phase, condition, number of experts)."""
        streaks = self._streak.get(key)
        if streaks is None:
            streaks = self._streak[key] = _RouterStreaks(key[2])
        return streaks

    def _judge_loads(self) -> None:
        """Recorded loads whose copies have landed, judged for starved and hot experts (every router
        with the same number of experts at once)."""
        while self._pending and self._pending[0].ready():
            load = self._pending.pop(0)
            if load.phase != TRAIN and self._trained:
                continue  # inference is judged only while the run has not trained
            for rows, counts_RE in load.counts_alike():
                experts = counts_RE.shape[1]
                names = [load.rows[i].name for i in rows]
                starved = self._streaks_of((load.phase, "starved", experts))
                hot = self._streaks_of((load.phase, "hot", experts))
                starved_RE = starved.update(load.step, names, counts_RE == 0)
                hot_RE = hot.update(load.step, names, hot_flags(counts_RE))
                if starved.quiet and hot.quiet:
                    continue                    # no stretch going: nothing can be due
                for j in np.flatnonzero(starved_RE.any(axis=1) | hot_RE.any(axis=1)):
                    self._report(load, names[j], counts_RE[j], np.flatnonzero(starved_RE[j]), starved.of(names[j]),
                                 np.flatnonzero(hot_RE[j]), hot.of(names[j]))
        del self._pending[:-64]  # copies that never land (a dead device) must not pile up

    def _report(self, load: "_StepLoad", name: str, counts: np.ndarray, starved: np.ndarray, starved_streak: _Streak,
                overloaded: np.ndarray, hot: _Streak) -> None:
        """The anomalies of one router at a judged load: starved and hot experts."""
        where = "recorded step" if load.phase == TRAIN else "recorded inference step"
        if starved.size:
            since = int(starved_streak.since[starved].min())
            self.ctx.report(
                "expert_starved",
                f"{name}: expert(s) {starved.tolist()} received no token in any {where} "
                f"from step {since} to {load.step} ({int(starved_streak.seen[starved].min())} recorded)",
                module=name, value=float(starved.size), step=load.step)
        if overloaded.size:
            share = counts[overloaded] / max(float(np.asarray(counts).sum()), 1.0)
            self.ctx.report(
                "expert_hot",
                f"{name}: expert(s) {overloaded.tolist()} received ≥ {HOT_FACTOR:g}× the balanced "
                f"share ({1 / counts.shape[0]:.1%}) in every {where} from step "
                f"{int(hot.since[overloaded].min())} to {load.step} (now {', '.join(f'{x:.1%}' for x in share)})",
                module=name, value=float(overloaded.size), step=load.step)

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(message)

    def detach(self) -> None:
        """Record what ran since the last step end (at the current step), then remove the hooks."""
        try:
            if self.ctx is not None and self.switched_off_reason() is None:
                self._record(self.ctx.step, last=True)
        except Exception as exc:  # the run is closing: say so, never raise
            self._warn(f"inspector: experts probe could not record the last forwards: {type(exc).__name__}: {exc}")
        super().detach()
        self._acc = fresh_sums()
        self._undecided = []
        self._stage_load = {}
        if self.ctx is not None:
            listeners = self.ctx.shared.get(FORWARD_END_KEY, [])
            listeners[:] = [fn for fn in listeners if getattr(fn, "__wrapped__", None) != self._forward_ended]

    def switched_off_reason(self) -> str | None:
        """Why the Watch switched this probe off (None while it works, or on a base without switch-off)."""
        return getattr(self, "switched_off", None)
