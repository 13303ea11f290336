"""A planted per-layer learning-rate spike: one layer's optimizer update made `factor` times larger at
one step (what a wrong per-group LR, a bad LR-schedule branch or a corrupted optimizer state does to
that layer), through optimizer hooks registered before the Inspector's, so the probes see the
spiked weights exactly as they would see a real one."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


class UpdateSpike:
    """Scale the update of every parameter under `layer` by `factor` at the optimizer step taken
    while `current_step()` equals `step`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, layer: str, step: int, factor: float,
                 current_step: Callable[[], int]) -> None:
        self.params = [p for n, p in model.named_parameters() if n.startswith(layer + ".")]
        if not self.params:
            raise ValueError(f"no parameters under {layer!r}")
        self.step, self.factor, self.current_step = step, factor, current_step
        self.before: list[torch.Tensor] | None = None
        optimizer.register_step_pre_hook(self._pre)
        optimizer.register_step_post_hook(self._post)

    def _pre(self, *_: Any) -> None:
        if self.current_step() == self.step:
            self.before = [p.detach().clone() for p in self.params]

    def _post(self, *_: Any) -> None:
        if self.before is None:
            return
        with torch.no_grad():
            for p, b in zip(self.params, self.before):
                p.add_((p - b) * (self.factor - 1.0))
        self.before = None
