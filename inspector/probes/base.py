"""The probe contract: what every probe implements and what it is handed.

A probe is created with no arguments, then `attach(ctx)` registers its torch hooks on
`ctx.model` (keeping the handles via `self.track(...)`) and returns None, or returns a one-line
reason when it does not apply to this model (a plain MLP has no attention); the Watch logs that
reason once and carries on. The Watch then calls `on_step_end(step)` after every training step
and `on_scalars(step, scalars)` with what the user passed to `Watch.step()`. `detach()` removes
every hook. The hot-path rules of ARCHITECTURE.md apply: reduce on the device, never call
`.item()`/`.cpu()`/`.tolist()` on the training thread for a CUDA tensor (use `to_host`), and
record only on the steps `ctx.sampling.due(name, step)` selects.

Nothing a probe raises reaches the training loop. Every torch hook registered through
`track(handle)` (module forward-pre/forward/backward hooks, tensor and post-accumulate-grad hooks,
optimizer step pre/post hooks, and the engine callback of a tracked `BackwardEnd`) is replaced in
torch's own hook dict by `guard(hook)`: the hook's value on success; on an exception the probe is
switched off (`switch_off`: one warning line naming it, a `probe_error` anomaly) and the hook
returns None, so the module's own output is kept. A probe that calls something back by other
means (a hook registered inside a hook, `queue_callback`) wraps it with `self.guard(fn)` itself.
The Watch guards the step callbacks, `attach` and `detach` the same way, hands each probe a
context whose recorder guards the deferred values it submits (resolved on the writer thread), and
detaches a switched-off probe at the end of the step.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from inspector.probes.backward_end import BackwardEnd
from inspector.probes.model_map import module_names
from inspector.probes.sampling import Sampling
from inspector.store.columns import resolve
from inspector.store.recorder import Recorder

log = logging.getLogger("inspector")

PROBE_ERROR = "probe_error"
"""Anomaly kind recorded when a probe is switched off after an exception."""

_switch_lock = threading.Lock()
_PLAIN = (str, float, int, bool, type(None))


@dataclass
class ProbeContext:
    """Everything a probe needs: the model, the recorder, the optimizer and the sampling plan."""

    model: nn.Module
    recorder: Recorder
    sampling: Sampling
    optimizer: torch.optim.Optimizer | None = None
    names: dict[nn.Module, str] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    hook_ids: set[int] = field(default_factory=set)  # ids of every torch hook the probes registered
    anomaly_listeners: list[Callable[[str, int], None]] = field(default_factory=list)  # told (kind, step) of each report
    _reported: set[tuple[str, str]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = module_names(self.model)

    @property
    def step(self) -> int:
        """The step being executed now (0-based; steps completed so far)."""
        return self.recorder.step

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self.recorder.rank

    def name_of(self, module: nn.Module) -> str:
        """Qualified name of a submodule of the model ("" for the root)."""
        return self.names.get(module, type(module).__name__)

    def report(self, kind: str, message: str, *, module: str = "", severity: str = "warning",
               value: float = math.nan, step: int | None = None) -> bool:
        """Record an anomaly; it is printed to the training log the first time (kind, module) occurs.

        Returns True the first time, False for repeats (which are still recorded).
        """
        at = self.step if step is None else step
        self.recorder.anomaly(kind, message, module=module, severity=severity, value=value, step=at)
        key = (kind, module)
        with self._lock:
            first = key not in self._reported
            self._reported.add(key)
        if first:
            log.warning("inspector: step %d rank %d: %s", at, self.rank, message)
        for listener in list(self.anomaly_listeners):
            listener(kind, at)
        return first

    def for_probe(self, probe: "Probe") -> "ProbeContext":
        """This context for one probe: the same model, state and shared dicts, and a recorder that
        switches `probe` off when a deferred value it submitted fails on the writer thread."""
        return replace(self, recorder=ProbeRecorder(self.recorder, probe))

    def probe_error(self, probe: "Probe", where: str, error: str) -> None:
        """Say once (one warning line) and record (anomaly `probe_error`) that `probe` was switched off."""
        name = probe.name or type(probe).__name__
        message = f"{name} probe switched off after an error in {where}: {error}"
        step = self.step
        log.warning("inspector: step %d rank %d: %s", step, self.rank, message)
        try:
            self.recorder.anomaly(PROBE_ERROR, message, module=name, severity="warning", step=step)
        except Exception:  # noqa: BLE001 - a closed or failed recorder: the log line stays
            log.debug("inspector: could not record the %s probe's error", name, exc_info=True)


class ProbeRecorder:
    """A probe's view of the Recorder: submits go to the real one, each deferred value (anything
    with `resolve()`, resolved on the writer thread) wrapped so that its failure switches the probe
    off. Everything else is the real Recorder's."""

    def __init__(self, recorder: Recorder, probe: "Probe") -> None:
        self._recorder = recorder
        self._probe = probe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._recorder, name)

    @property
    def step(self) -> int:
        """The Recorder's current step (read by every hook's `due_now`: no `__getattr__` detour)."""
        return self._recorder.step

    def submit(self, kind: Any, columns: Any, rows: int = 1, step: int | None = None) -> bool:
        """`Recorder.submit`, deferred column values guarded."""
        return self._recorder.submit(kind, {k: self._wrap(v) for k, v in columns.items()}, rows, step)

    def submit_blob(self, kind: Any, array: Any, columns: Any, step: int | None = None) -> bool:
        """`Recorder.submit_blob`, the deferred array and column values guarded."""
        return self._recorder.submit_blob(kind, self._wrap(array), {k: self._wrap(v) for k, v in columns.items()},
                                          step)

    # the Recorder's conveniences, run on this object so that they submit through it
    scalar = Recorder.scalar
    scalars = Recorder.scalars
    histogram = Recorder.histogram
    histograms = Recorder.histograms
    attention_map = Recorder.attention_map
    attention_rows = Recorder.attention_rows

    def _wrap(self, value: Any) -> Any:
        kind = type(value)
        if kind in _PLAIN:
            return value
        if callable(getattr(value, "resolve", None)) or (
                kind in (list, tuple) and any(t not in _PLAIN and callable(getattr(t, "resolve", None))
                                              for t in set(map(type, value)))):
            return _GuardedValue(value, self._probe)
        return value


class _GuardedValue:
    """A deferred value of a probe's record: resolved on the writer thread; a failure switches the
    probe off and is re-raised (marked `inspector_reported`) so the Recorder drops the record. The
    Recorder may resolve a chunk twice (whole batch, then chunk by chunk): a failure is kept and
    raised again without running the probe's code a second time."""

    __slots__ = ("value", "probe", "error")

    def __init__(self, value: Any, probe: "Probe") -> None:
        self.value = value
        self.probe = probe
        self.error: Exception | None = None

    def resolve(self) -> Any:
        """The value, resolved."""
        if self.error is not None:
            raise self.error
        try:
            return resolve(self.value)
        except Exception as exc:
            self.error = exc
            self.probe.switch_off(exc, "a record it submitted (writer thread)")
            try:
                exc.inspector_reported = True  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - an exception type without attributes
                pass
            raise


class Probe:
    """Base class of all probes; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = ()
    switched_off: str | None = None
    """None while the probe works; after it raised, why it was switched off."""
    _due_at: tuple[int, bool] = (-1, False)
    """(step, due at that step): `due_now` decides once per step."""

    def __init__(self) -> None:
        self.ctx: ProbeContext | None = None
        self.switched_off = None
        self._handles: list[Any] = []

    def due_now(self) -> bool:
        """True when this probe's sampling period has it record at the current step (decided once per
        step: a hook that fires on every forward of a sampled run returns on this one check)."""
        ctx = self.ctx
        if ctx is None:
            return False
        step = ctx.recorder.step
        at, due = self._due_at
        if at != step:
            due = ctx.sampling.due(self.name, step)
            self._due_at = (step, due)
        return due

    def attach(self, ctx: ProbeContext) -> str | None:
        """Register hooks on `ctx.model`; None when attached, else why the probe does not apply."""
        self.ctx = ctx
        return None

    def on_step_end(self, step: int) -> None:
        """Called after step `step` finished (after the optimizer step when there is one)."""

    def on_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        """Called with the scalars the user recorded for `step` (e.g. the loss)."""

    def track(self, handle: Any) -> Any:
        """Remember a hook handle (anything with `.remove()`) for `detach()`, and guard its hook.

        For a torch `RemovableHandle` the hook in torch's hook dict is replaced by `guard(hook)`
        (same key, so order, `with_kwargs` and `always_call` flags stay as registered); a hook that
        is a tracked `BackwardEnd`'s also has its end-of-backward callback guarded.
        """
        self._handles.append(handle)
        hook_id = getattr(handle, "id", None)
        if isinstance(hook_id, int):
            ref = getattr(handle, "hooks_dict_ref", None)
            hooks = ref() if callable(ref) else None
            if hooks is not None and hook_id in hooks:
                hook = hooks[hook_id]
                owner = getattr(hook, "__self__", None)
                if isinstance(owner, BackwardEnd):
                    owner._fn = self.guard(owner._fn, f"end-of-backward callback ({_callable_name(owner._fn)})")  # noqa: SLF001
                hooks[hook_id] = self.guard(hook, lambda: _hook_site(self.ctx, ref(), hook))
            if self.ctx is not None:
                self.ctx.hook_ids.add(hook_id)
        return handle

    def guard(self, fn: Callable, where: str | Callable[[], str] | None = None) -> Callable:
        """`fn` wrapped so that nothing it raises escapes: its value on success; on an exception
        this probe is switched off and None is returned (a hook's None keeps the module's own
        output). After the switch-off it returns None at once. Guarding twice wraps once.

        `where` names the place for the message (or computes it, only on failure); default: `fn`'s name.
        Positional arguments only (torch calls hooks and callbacks so): no per-call cost but the try.
        """
        if getattr(fn, "__inspector_guard__", None) is self:
            return fn
        probe = self
        label = where or _callable_name(fn)
        disabled = getattr(fn, "_torchdynamo_disable", False)
        call = fn
        if disabled and getattr(fn, "_torchdynamo_disable_recursive", True):
            # the guard below is a compiled region's boundary itself: one wrapper per call, not two
            call = getattr(fn, "_torchdynamo_orig_callable", None) or fn

        def guarded(*args: Any) -> Any:
            if probe.switched_off is not None:
                return None
            try:
                return call(*args)
            except Exception as exc:  # noqa: BLE001 - nothing a probe raises reaches the training loop
                probe.switch_off(exc, label)
                return None

        if disabled:  # a compiled region's boundary stays one
            guarded = torch._dynamo.disable(guarded)
        guarded.__wrapped__ = fn  # type: ignore[attr-defined]
        guarded.__inspector_guard__ = probe  # type: ignore[attr-defined]
        guarded.__name__ = getattr(fn, "__name__", "guarded")
        guarded.__qualname__ = _callable_name(fn)
        return guarded

    def switch_off(self, exc: BaseException, where: str | Callable[[], str]) -> None:
        """Stop this probe after `exc` raised in `where`: its guarded hooks do nothing from now on,
        the Watch detaches it at the end of the step; said and recorded once (`ProbeContext.probe_error`)."""
        error = (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0]
        with _switch_lock:
            if self.switched_off is not None:
                return
            self.switched_off = "switched off"
        try:
            where = where if isinstance(where, str) else where()
        except Exception:  # noqa: BLE001 - describing the place must not fail the guard
            where = "a hook"
        self.switched_off = f"switched off after an error in {where}: {error}"
        log.debug("inspector: %s probe error in %s", self.name, where, exc_info=exc)
        if self.ctx is not None:
            self.ctx.probe_error(self, where, error)
        else:
            log.warning("inspector: %s probe switched off after an error in %s: %s",
                        self.name or type(self).__name__, where, error)

    def detach(self) -> None:
        """Remove every hook this probe registered."""
        for h in self._handles:
            h.remove()
            if self.ctx is not None:
                self.ctx.hook_ids.discard(getattr(h, "id", None))
        self._handles.clear()


_HOOK_SITES = (
    ("module", "_forward_pre_hooks", "forward-pre hook"), ("module", "_forward_hooks", "forward hook"),
    ("module", "_backward_pre_hooks", "backward-pre hook"), ("module", "_backward_hooks", "backward hook"),
    ("parameter", "_backward_hooks", "gradient hook"),
    ("parameter", "_post_accumulate_grad_hooks", "post-accumulate-grad hook"),
    ("optimizer", "_optimizer_step_pre_hooks", "optimizer step pre-hook"),
    ("optimizer", "_optimizer_step_post_hooks", "optimizer step post-hook"),
)


def _hook_site(ctx: ProbeContext | None, hooks: Any, fn: Any) -> str:
    """Which hook of what holds the hook dict `hooks` ("forward hook on layers.0 (Probe._hook)");
    searched only when a hook failed."""
    site = "hook"
    if ctx is not None and hooks is not None:
        owners = {"module": list(ctx.model.named_modules()), "parameter": list(ctx.model.named_parameters()),
                  "optimizer": [("", ctx.optimizer)] if ctx.optimizer is not None else []}
        found = next(((label, kind, name) for kind, attr, label in _HOOK_SITES for name, obj in owners[kind]
                      if getattr(obj, attr, None) is hooks), None)
        if found is not None:
            label, kind, name = found
            site = (label if kind == "optimizer" else f"{label} on {name or 'the model'}" if kind == "module"
                    else f"{label} on parameter {name}")
    return f"{site} ({_callable_name(fn)})"


def _callable_name(fn: Any) -> str:
    """A readable name of a hook: `Class.method`, a function's qualified name, or its type."""
    return str(getattr(fn, "__qualname__", None) or getattr(getattr(fn, "func", None), "__qualname__", None)
               or type(fn).__name__)
