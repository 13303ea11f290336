"""The probe contract: what every probe implements and what it is handed.

A probe is created with no arguments, then `attach(ctx)` registers its torch hooks on
`ctx.model` (keeping the handles via `self.track(...)`) and returns None, or returns a one-line
reason when it does not apply to this model (a plain MLP has no attention); the Watch logs that
reason once and carries on. The Watch then calls `on_step_end(step)` after every training step
and `on_scalars(step, scalars)` with what the user passed to `Watch.step()`. `detach()` removes
every hook. The hot-path rules of ARCHITECTURE.md apply: reduce on the device, never call
`.item()`/`.cpu()`/`.tolist()` on the training thread for a CUDA tensor (use `to_host`), and
record only on the steps `ctx.sampling.due(name, step)` selects.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from inspector.probes.model_map import module_names
from inspector.probes.sampling import Sampling
from inspector.store.recorder import Recorder

log = logging.getLogger("inspector")


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
        return first


class Probe:
    """Base class of all probes; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.ctx: ProbeContext | None = None
        self._handles: list[Any] = []

    def attach(self, ctx: ProbeContext) -> str | None:
        """Register hooks on `ctx.model`; None when attached, else why the probe does not apply."""
        self.ctx = ctx
        return None

    def on_step_end(self, step: int) -> None:
        """Called after step `step` finished (after the optimizer step when there is one)."""

    def on_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        """Called with the scalars the user recorded for `step` (e.g. the loss)."""

    def track(self, handle: Any) -> Any:
        """Remember a hook handle (anything with `.remove()`) for `detach()`."""
        self._handles.append(handle)
        if self.ctx is not None and isinstance(getattr(handle, "id", None), int):
            self.ctx.hook_ids.add(handle.id)
        return handle

    def detach(self) -> None:
        """Remove every hook this probe registered."""
        for h in self._handles:
            h.remove()
            if self.ctx is not None:
                self.ctx.hook_ids.discard(getattr(h, "id", None))
        self._handles.clear()
