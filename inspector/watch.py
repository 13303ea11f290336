"""`inspector.watch`: attach the Inspector's probes to any `torch.nn.Module` and record a run.

`watch()` opens a Recorder for this rank (rank and world size from an initialised
torch.distributed process group, else from torchrun's environment: `DistEnv.detect`),
writes the model summary and probe settings into run.json, attaches the selected probes, and
advances the step counter from the optimizer's step hook when an optimizer is given, else from
`Watch.step()`. `with watch.phase("eval"):` marks an evaluation loop the timing probe cannot
detect by itself (see `inspector.probes.timing`); `with watch.phase("checkpoint"):` a checkpoint save.
Whatever probes are chosen, the watchdog (`inspector.watchdog`) runs too: phase hooks keep track of
where the rank is (data, forward, backward, optimizer, a collective, eval, checkpoint, user code), a
thread writes `heartbeat.json` every `heartbeat_s` and the stacks of all threads when the rank made
no progress for `hang_after_s`; the collective tracker (`inspector.watchdog.collectives`, when
present) records the collectives the rank entered and completed. `close()` removes every hook
(the model then computes exactly what it did before) and writes a last heartbeat, phase "closed".
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import threading
import types
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from inspector.probes import PROBES, Probe, ProbeContext, Sampling, resolve_probes, to_host
from inspector.store.format import rank_dir_name
from inspector.store.recorder import Recorder
from inspector.watchdog import PhaseHooks, Progress, Watchdog

log = logging.getLogger("inspector")

PHASES = ("eval", "checkpoint")
"""The phases `Watch.phase` knows."""

_active: list["Watch"] = []
_active_lock = threading.Lock()


def model_summary(model: nn.Module) -> dict[str, Any]:
    """Class, parameter counts and top-level children of a model, for run.json."""
    params = list(model.parameters())
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": int(sum(p.numel() for p in params)),
        "trainable_parameters": int(sum(p.numel() for p in params if p.requires_grad)),
        "children": [f"{n}: {type(m).__name__}" for n, m in model.named_children()][:64],
        "dtype": str(params[0].dtype) if params else None,
        "device": str(params[0].device) if params else None,
    }


class Watch:
    """A model being recorded: call `.step(loss=...)` once per training step, `.close()` at the end."""

    tracks_backward = True
    """Whether the watchdog hooks the blocks' outputs to follow the backward pass."""

    def __init__(self, model: nn.Module, recorder: Recorder, *, optimizer: torch.optim.Optimizer | None,
                 probes: Sequence[str], sampling: Sampling, hang_after_s: float | None = 20.0,
                 heartbeat_s: float = 2.0) -> None:
        self.model = model
        self.recorder = recorder
        self.global_step = 0
        self.ctx = ProbeContext(model=model, recorder=recorder, sampling=sampling, optimizer=optimizer)
        self.probes: dict[str, Probe] = {}
        self.not_applicable: dict[str, str] = {}
        self._hooks: list[Any] = []
        self._auto = optimizer is not None
        self._prepare_shared(self.ctx.shared)
        for name in probes:
            self._attach(name)
        if optimizer is not None:
            self._hooks.append(optimizer.register_step_post_hook(self._on_optimizer_step))
        self.progress = Progress()
        self.phase_hooks: PhaseHooks | None = self._attach_phase_hooks()
        self.tracker: Any = _make_tracker(self.progress, model)
        self.watchdog: Watchdog | None = None
        if hang_after_s is not None and recorder.failed is None:
            self.watchdog = Watchdog(self.run_dir / rank_dir_name(recorder.rank), self.progress, self.tracker,
                                     rank=recorder.rank, world_size=recorder.world_size, heartbeat_s=heartbeat_s,
                                     hang_after_s=hang_after_s)
            if self.tracker is not None:
                self.tracker.on_error = self.watchdog.write_now
            self.watchdog.start()
        with _active_lock:
            _active.append(self)

    def _prepare_shared(self, shared: dict[str, Any]) -> None:
        """Fill the probes' shared dict before any probe attaches (a mode's watch says what it provides)."""

    @property
    def run_dir(self) -> Path:
        """The run directory being written."""
        return self.recorder.run_dir

    def _attach(self, name: str) -> None:
        """Create and attach probe `name`; one that raises doing so is switched off (said once, recorded)."""
        try:
            probe = PROBES[name]()
        except Exception as exc:  # noqa: BLE001 - a probe's bug must not stop training
            probe = _Unbuilt(name)
            probe.ctx = self.ctx
            probe.switch_off(exc, "its constructor")
            self.not_applicable[name] = probe.switched_off or ""
            return
        self._attach_probe(name, probe)

    def _attach_probe(self, name: str, probe: Probe) -> None:
        """Attach a built probe; one that raises doing so is switched off, one that does not apply is said."""
        ctx = self.ctx.for_probe(probe)
        try:
            reason = probe.attach(ctx)
        except Exception as exc:  # noqa: BLE001
            probe.ctx = ctx
            probe.switch_off(exc, "attach")
            reason = None
        if reason is None and probe.switched_off is None:
            self.probes[name] = probe
            return
        self._detach(name, probe)
        if probe.switched_off is not None:
            self.not_applicable[name] = probe.switched_off
        else:
            self.not_applicable[name] = reason or ""
            log.info("inspector: %s probe not applicable: %s", name, reason)

    def _attach_phase_hooks(self) -> PhaseHooks | None:
        """The watchdog's phase hooks, attached (None when attaching raised: said once, recorded)."""
        hooks = PhaseHooks(self.progress, backward=self.tracks_backward)
        try:
            hooks.attach(self.ctx.for_probe(hooks))
        except Exception as exc:  # noqa: BLE001
            hooks.ctx = hooks.ctx or self.ctx
            hooks.switch_off(exc, "attach")
            self._detach("watchdog", hooks)
            return None
        return hooks

    def _detach(self, name: str, probe: Probe) -> None:
        """`probe.detach()`; an error there switches it off (unless it already is) and goes no further."""
        try:
            probe.detach()
        except Exception as exc:  # noqa: BLE001
            probe.switch_off(exc, "detach")

    def _on_optimizer_step(self, *_: Any) -> None:
        self._end_step()

    def _end_step(self) -> None:
        for name, probe in list(self.probes.items()):
            end = probe.on_step_end
            if getattr(end, "__func__", None) is not Probe.on_step_end:     # the base's does nothing
                self._guard(name, end, self.global_step)
        if self.tracker is not None:
            _record_step_times(self.tracker, self.recorder, self.global_step)
        self._sweep()
        self.global_step += 1
        self.recorder.step = self.global_step
        if self.phase_hooks is not None:
            self.phase_hooks.step_end(self.global_step)

    def _guard(self, name: str, fn: Any, *args: Any) -> None:
        """Call a probe's step callback (unless the probe is switched off); a probe that raises is
        switched off (one warning line, a `probe_error` anomaly) and training goes on."""
        probe = self.probes.get(name)
        if probe is None or probe.switched_off is not None:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a probe's bug must not stop training
            probe.switch_off(exc, _callback_name(fn))

    def _sweep(self) -> None:
        """Detach the probes switched off since the last sweep (their hooks already do nothing)."""
        for name, probe in list(self.probes.items()):
            if probe.switched_off is not None:
                del self.probes[name]
                self.not_applicable[name] = probe.switched_off
                self._detach(name, probe)

    def step(self, **scalars: Any) -> int:
        """Record `scalars` (tensors are fine: read on the writer thread) for the step just done.

        Without an optimizer this also ends the step; with one, the optimizer's step did.
        Returns the step the scalars were recorded at.
        """
        at = max(self.global_step - 1, 0) if self._auto else self.global_step
        if scalars:
            self.recorder.scalars({k: _detach(v) for k, v in scalars.items()}, step=at)
            for name, probe in list(self.probes.items()):
                self._guard(name, probe.on_scalars, at, scalars)
        if not self._auto:
            self._end_step()
        else:
            self._sweep()
            if self.phase_hooks is not None:
                self.phase_hooks.step_end(self.global_step)
        return at

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark what runs inside as phase `name`: "eval" (timed as eval, not as training step time)
        or "checkpoint" (shown as such in the heartbeat and a hang verdict).

        The timing probe detects most eval loops itself (`no_grad`, or `model.eval()` without a
        backward); use this for the others: `with watch.phase("eval"): evaluate(model)`.
        """
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; known: {', '.join(PHASES)}")
        hooks = self.phase_hooks
        previous = hooks.begin(name) if hooks is not None else ""
        if name == "eval":
            self._phase_call("begin_phase", name)
        try:
            yield
        finally:
            if name == "eval":
                self._phase_call("end_phase", name)
            if hooks is not None:
                hooks.end(previous)

    def _phase_call(self, method: str, name: str) -> None:
        for probe_name, probe in list(self.probes.items()):
            fn = getattr(probe, method, None)
            if fn is not None:
                self._guard(probe_name, fn, name)

    def log(self, name: str, value: Any, step: int | None = None) -> None:
        """Record one scalar at `step` (default: the current step)."""
        self.recorder.scalar(name, _detach(value), step=step)

    def close(self) -> None:
        """Remove every hook, flush and close the run (a probe that raises in `detach` is said and
        recorded like any probe error; the run is closed all the same)."""
        try:
            detached = list(self.probes.items())
            for name, probe in detached:
                self._detach(name, probe)
            self.probes.clear()
            for h in self._hooks:
                h.remove()
            self._hooks.clear()
            if self.phase_hooks is not None:
                self._detach("watchdog", self.phase_hooks)
            _uninstall_tracker(self.tracker)
            with _active_lock:
                if self in _active:
                    _active.remove(self)
            # a deferred value that fails on the writer thread now can still record its probe_error
            self.recorder.flush()
            for name, probe in detached:
                if probe.switched_off is not None:
                    self.not_applicable[name] = probe.switched_off
        finally:
            if self.watchdog is not None:
                self.watchdog.stop()
            self.progress.set_phase("closed")
            self.recorder.close()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Unbuilt(Probe):
    """Stands in for a probe whose constructor raised, so it is reported like any other probe error."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name  # type: ignore[misc]


def _make_tracker(progress: Progress, model: nn.Module) -> Any:
    """The collective tracker (`inspector.watchdog.collectives`), installed and attached to a DDP
    model; None in a process without an initialised process group (no collective to record: call
    `init_process_group` before `watch`), or when setting it up raised (said once)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        from inspector.watchdog.collectives import CollectiveTracker
    except ImportError:
        return None
    try:
        tracker = CollectiveTracker(progress)
        tracker.install()
    except Exception as exc:  # noqa: BLE001 - the watchdog goes on without collectives
        log.warning("inspector: collective tracking off: %s: %s", type(exc).__name__, exc)
        return None
    try:
        why_not = tracker.attach_ddp(model)
        if why_not:
            log.info("inspector: DDP communication not tracked: %s", why_not)
    except Exception as exc:  # noqa: BLE001
        log.warning("inspector: DDP communication not tracked: %s: %s", type(exc).__name__, exc)
    return tracker


def _record_step_times(tracker: Any, recorder: Recorder, step: int) -> None:
    """The tracker's communication wait of `step` as `timing` rows (`collectives.record_step_times`,
    which never raises)."""
    from inspector.watchdog.collectives import record_step_times
    record_step_times(tracker, recorder, step)


def _uninstall_tracker(tracker: Any) -> None:
    """`tracker.uninstall()`, its errors said and swallowed."""
    if tracker is None:
        return
    try:
        tracker.uninstall()
    except Exception as exc:  # noqa: BLE001
        log.warning("inspector: collective tracker: %s: %s", type(exc).__name__, exc)


def _callback_name(fn: Any) -> str:
    """"on_step_end" for a probe's bound method, else the callable's name."""
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return to_host(value.detach().float() if value.dtype != torch.float32 else value)
    return value

MODES = ("training", "inference")
"""What `watch(mode=...)` accepts."""


def watch(model: nn.Module, run_dir: str | Path, *, probes: str | Sequence[str] = "default",
          optimizer: torch.optim.Optimizer | None = None, every: int | Mapping[str, int] | None = None,
          layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
          max_attention_rows: int | None = None, attention_positions: Sequence[int] | None = None,
          name: str | None = None,
          config: Mapping[str, Any] | None = None, hang_after_s: float | None = 20.0, heartbeat_s: float = 2.0,
          mode: str = "training", tokenizer: Any = None, **recorder_options: Any) -> Watch:
    """Start recording `model` into `run_dir` (one directory per run; each rank writes its own part).

    `mode="inference"` returns an `InferenceWatch` (see `inspector.inference`): one step per serving
    iteration, per-request latency and per-iteration batch/KV-cache records, expert load split into
    prefill and decode; "default" probes are then attention, experts and system, and `tokenizer`
    (anything with `decode(ids)`) labels the recorded tokens.

    `probes`: "default", "all", "none" or a list of probe names. `every`: sampling period(s) in
    steps (an int for all heavy probes, or e.g. {"attention": 50}). `layers`/`heads`: which
    attention layers and heads to keep (default all); `max_attention_rows`: the attention map is
    block-averaged to at most this many rows and its square in cells (statistics always cover every
    row); `attention_positions`: query positions kept as full rows beside a pooled map (negative
    from the end; default the last). `hang_after_s`: seconds without progress after which the rank writes
    the stacks of its threads into its rank directory, again every minute while the stall lasts
    (None: no watchdog thread); `heartbeat_s`: how often it rewrites `heartbeat.json` (also the
    Recorder's liveness period). Other keyword arguments go to the `Recorder`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "inference" and optimizer is not None:
        raise ValueError("mode='inference' takes no optimizer")
    extra: dict[str, Any] = {} if max_attention_rows is None else {"max_attention_rows": int(max_attention_rows)}
    if attention_positions is not None:
        extra["attention_positions"] = tuple(int(p) for p in attention_positions)
    if mode == "inference":
        from inspector.inference.watch import InferenceWatch, inference_probes, inference_sampling

        selected = inference_probes(probes)
        sampling = inference_sampling(every, layers=layers, heads=heads, **extra)
    else:
        selected = resolve_probes(probes)
        sampling = Sampling.build(every, layers=layers, heads=heads, **extra)
    recorder = Recorder(run_dir, name=name, config=config, model=model_summary(model),
                        probes={"selected": selected, "sampling": dataclasses.asdict(sampling), "mode": mode},
                        heartbeat_s=heartbeat_s, **recorder_options)
    if mode == "inference":
        return InferenceWatch(model, recorder, probes=selected, sampling=sampling, tokenizer=tokenizer,
                              hang_after_s=hang_after_s, heartbeat_s=heartbeat_s)
    return Watch(model, recorder, optimizer=optimizer, probes=selected, sampling=sampling,
                 hang_after_s=hang_after_s, heartbeat_s=heartbeat_s)


def log_scalar(name: str, value: Any, step: int | None = None) -> None:
    """Record a metric of your own into the most recently started, still open `watch()`."""
    with _active_lock:
        current = _active[-1] if _active else None
    if current is None:
        raise RuntimeError("inspector.log_scalar: no active run; call inspector.watch(model, run_dir) first")
    current.log(name, value, step)


class _CallableModule(types.ModuleType):
    """This module, callable as its `watch` function. `inspector.watch(model, run)` is the package's
    lazily imported function, but importing this module (`from inspector.watch import Watch`) makes
    Python bind the package's `watch` attribute to the module: calling it must still watch."""

    def __call__(self, *args: Any, **kwargs: Any) -> "Watch":
        return watch(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
