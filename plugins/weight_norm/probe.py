"""WeightNormProbe: L2 norm and RMS of each block's parameters every `period` steps, on the device."""
from __future__ import annotations

import torch

from inspector.probes.base import Probe, ProbeContext
from inspector.probes.host import HostSlice, to_host
from inspector.probes.model_map import find_blocks
from plugins.weight_norm.kind import WEIGHT_NORM


class WeightNormProbe(Probe):
    """Per block: ‖w‖₂ over all its parameters and their root mean square (one host copy per sample)."""

    name = "weight_norm"
    kinds = (WEIGHT_NORM.name,)
    period = 10

    def attach(self, ctx: ProbeContext) -> str | None:
        """Group the model's parameters by block (the whole model when it has no blocks)."""
        super().attach(ctx)
        self.groups: list[tuple[str, list[torch.nn.Parameter]]] = []
        for name, block in find_blocks(ctx.model):
            params = [p for p in block.parameters() if p.is_floating_point()]
            if params:
                self.groups.append((name, params))
        if not self.groups:
            return "the model has no floating-point parameters"
        first = self.groups[0][1][0]
        # made once: a tensor built from a list on every sample would be a blocking host-to-device copy
        self.sizes = torch.tensor([sum(p.numel() for p in params) for _, params in self.groups],
                                  dtype=torch.float32, device=first.device)
        return None

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """Record the norms at every `period`-th step (after the optimizer step)."""
        if step % self.period:
            return
        squares = torch.stack([torch.stack(torch._foreach_norm(params)).float().square().sum()
                               for _, params in self.groups])
        norm = squares.sqrt()
        rms = (squares / self.sizes).sqrt()
        both = to_host(torch.stack([norm, rms]))
        self.ctx.recorder.submit(WEIGHT_NORM, {"name": [n for n, _ in self.groups],
                                               "norm": HostSlice(both, 0), "rms": HostSlice(both, 1)},
                                 len(self.groups), step=step)

