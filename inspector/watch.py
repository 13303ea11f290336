"""`inspector.watch`: attach the Inspector to any `torch.nn.Module` and record a run.

`watch()` opens a Recorder for this rank, writes the model summary into run.json, and advances
the step counter either from `Watch.step()` or, when an optimizer is given, from the optimizer's
step hook. Probes (attention, gradients, activations, timing, experts, system) attach here.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from inspector.store.recorder import Recorder

PROBE_SETS: dict[str, list[str]] = {"none": [], "default": [], "all": []}
"""Named probe selections; the probes package registers its probes into these."""

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

    def __init__(self, model: nn.Module, recorder: Recorder, *, optimizer: torch.optim.Optimizer | None,
                 probes: Sequence[str]) -> None:
        self.model = model
        self.recorder = recorder
        self.probes = list(probes)
        self.global_step = 0
        self._hooks: list[Any] = []
        if optimizer is not None:
            self._hooks.append(optimizer.register_step_post_hook(self._on_optimizer_step))
        self._auto = optimizer is not None
        with _active_lock:
            _active.append(self)

    @property
    def run_dir(self) -> Path:
        """The run directory being written."""
        return self.recorder.run_dir

    def _on_optimizer_step(self, *_: Any) -> None:
        self.global_step += 1
        self.recorder.step = self.global_step

    def step(self, **scalars: Any) -> int:
        """Record `scalars` (tensors are fine: read on the writer thread) for the step just done.

        Without an optimizer this also advances the step; with one, the optimizer's step did.
        Returns the step the scalars were recorded at.
        """
        at = self.global_step - 1 if self._auto else self.global_step
        at = max(at, 0)
        if scalars:
            self.recorder.scalars({k: _detach(v) for k, v in scalars.items()}, step=at)
        if not self._auto:
            self.global_step += 1
            self.recorder.step = self.global_step
        return at

    def log(self, name: str, value: Any, step: int | None = None) -> None:
        """Record one scalar at `step` (default: the current step)."""
        self.recorder.scalar(name, _detach(value), step=step)

    def close(self) -> None:
        """Remove every hook, flush and close the run."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        with _active_lock:
            if self in _active:
                _active.remove(self)
        self.recorder.close()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.device.type != "cpu":
            return _DeviceScalar(value)
    return value


class _DeviceScalar:
    """A device tensor copied to the host without blocking; resolved on the writer thread."""

    __slots__ = ("host", "event")

    def __init__(self, value: torch.Tensor) -> None:
        self.host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
        self.host.copy_(value, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()

    def resolve(self) -> Any:
        self.event.synchronize()
        return self.host.float().numpy()


def watch(model: nn.Module, run_dir: str | Path, *, probes: str | Sequence[str] = "default",
          optimizer: torch.optim.Optimizer | None = None, name: str | None = None,
          config: Mapping[str, Any] | None = None, **recorder_options: Any) -> Watch:
    """Start recording `model` into `run_dir` (one directory per run; ranks come from torchrun)."""
    selected = _resolve_probes(probes)
    recorder = Recorder(run_dir, name=name, config=config, model=model_summary(model),
                        probes={"selected": selected}, **recorder_options)
    return Watch(model, recorder, optimizer=optimizer, probes=selected)


def _resolve_probes(probes: str | Sequence[str]) -> list[str]:
    if isinstance(probes, str):
        if probes not in PROBE_SETS:
            raise ValueError(f"probes must be one of {sorted(PROBE_SETS)} or a list of probe names, not {probes!r}")
        return list(PROBE_SETS[probes])
    known = set().union(*PROBE_SETS.values())
    unknown = [p for p in probes if p not in known]
    if unknown:
        raise ValueError(f"unknown probe(s) {unknown}; available: {sorted(known) or 'none yet'}")
    return list(probes)


def log_scalar(name: str, value: Any, step: int | None = None) -> None:
    """Record a metric of your own into the most recently started, still open `watch()`."""
    with _active_lock:
        current = _active[-1] if _active else None
    if current is None:
        raise RuntimeError("inspector.log_scalar: no active run; call inspector.watch(model, run_dir) first")
    current.log(name, value, step)
