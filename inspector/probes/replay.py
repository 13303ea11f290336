"""What a step trained on, so that a step an anomaly names can be replayed exactly.

Every training step: one `batch` row per forward of the model (micro-batches of gradient
accumulation are rows 0, 1, ...): a position-sensitive fingerprint of the forward's tensor
arguments (`fingerprint.batch_fingerprint`, computed on their device, copied to the host without a
wait) and their shapes and dtypes. Forwards without gradients (evaluation, generation) are not
batches of training and are skipped.

The random number generators' states at the start of each step (torch's CPU generator, the current
CUDA device's when CUDA is initialised, Python's `random` and NumPy's global one) are kept in memory for the
last `KEEP_STEPS` steps (taken when the previous step ended, so they include what the data pipeline
draws; about 8 KB each) and written, kind `rng_state`, only for a step some probe reports an
anomaly at (`ProbeContext.report`). `inspector.replay.restore_rng(run, step)` sets them back.
"""
from __future__ import annotations

import json
import random
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from inspector.probes.base import PROBE_ERROR, Probe, ProbeContext
from inspector.probes.fingerprint import batch_fingerprint
from inspector.probes.host import HostSlice, to_host
from inspector.probes.registry import register_probe

KEEP_STEPS = 8
"""Steps whose generator states are held: an anomaly is reported at most a few steps late."""


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]


@register_probe
class ReplayProbe(Probe):
    """Batch fingerprints every step; generator states at the steps anomalies are reported at."""

    name = "replay"
    kinds = ("batch", "rng_state")

    def __init__(self) -> None:
        super().__init__()
        self._states: OrderedDict[int, dict[str, bytes] | tuple] = OrderedDict()
        self._written: set[int] = set()
        self._forwards: dict[int, int] = {}
        self._listener: Any = None

    def attach(self, ctx: ProbeContext) -> str | None:
        super().attach(ctx)
        self.track(ctx.model.register_forward_pre_hook(torch._dynamo.disable(self._on_forward), with_kwargs=True))
        self._listener = self.guard(self._on_anomaly, "its anomaly listener")
        ctx.anomaly_listeners.append(self._listener)
        self._keep(ctx.step)
        return None

    def detach(self) -> None:
        if self.ctx is not None and self._listener in self.ctx.anomaly_listeners:
            self.ctx.anomaly_listeners.remove(self._listener)
        super().detach()

    def on_step_end(self, step: int) -> None:
        self._keep(step + 1)
        self._forwards.pop(step, None)

    def _keep(self, step: int) -> None:
        self._states[step] = _raw_states()
        while len(self._states) > KEEP_STEPS:
            self._states.popitem(last=False)

    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not (torch.is_grad_enabled() and module.training):
            return
        tensors = _tensors(args, kwargs)
        if not tensors:
            return
        step = self.ctx.step
        micro = self._forwards.get(step, 0)
        self._forwards[step] = micro + 1
        with torch.no_grad():
            fp = to_host(batch_fingerprint(tensors).reshape(1))
        shapes = "; ".join(f"{'×'.join(map(str, t.shape)) or 'scalar'} {str(t.dtype).removeprefix('torch.')}"
                           for t in tensors)
        self.ctx.recorder.submit("batch", {"micro": micro, "fingerprint": HostSlice(fp, 0, np.int64),
                                           "shapes": shapes}, step=step)

    def _on_anomaly(self, kind: str, step: int) -> None:
        if kind == PROBE_ERROR or step in self._written or step not in self._states:
            return
        self._written.add(step)
        states = _serialise(self._states[step])
        self.ctx.recorder.submit("rng_state", {"generator": list(states), "state": list(states.values())},
                                 rows=len(states), step=step)


def _raw_states() -> tuple:
    """The states as the libraries return them (cheap: serialised only when written)."""
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():   # this rank's device only: querying the
        index = torch.cuda.current_device()                          # others would create contexts there
        cuda = [(index, torch.cuda.get_rng_state(index))]
    return torch.get_rng_state(), cuda, random.getstate(), np.random.get_state()


def _serialise(raw: tuple) -> dict[str, bytes]:
    cpu, cuda, py, nump = raw
    out = {"torch.cpu": cpu.numpy().tobytes()}
    for index, state in cuda:
        out[f"torch.cuda:{index}"] = state.numpy().tobytes()
    version, internal, gauss = py
    out["python.random"] = json.dumps([version, list(internal), gauss]).encode()
    name, keys, pos, has_gauss, cached = nump
    out["numpy.random"] = json.dumps([name, keys.tolist(), int(pos), int(has_gauss), float(cached)]).encode()
    return out
