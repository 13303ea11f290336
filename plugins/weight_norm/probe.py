"""WeightNormProbe: L2 norm and RMS of each block's parameters every `period` steps, on the device.

DTensor parameters (FSDP2) count whole: each rank takes the norms of the shards it holds and one
small `all_reduce` per sampled step (`grad_math.ShardSums`) adds their squares up; no parameter is
gathered.
"""
from __future__ import annotations

import torch

from inspector.probes.base import Probe, ProbeContext
from inspector.probes.grad_math import ShardSums, local
from inspector.probes.host import HostSlice, to_host
from inspector.probes.model_map import find_blocks
from inspector_plugins.weight_norm.kind import WEIGHT_NORM


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
        self.params = [p for _, params in self.groups for p in params]
        ends = torch.tensor([len(params) for _, params in self.groups]).cumsum(0).tolist()
        self.spans = list(zip([0] + ends[:-1], ends))
        self.shards = ShardSums(self.params)
        self.all_present = tuple(range(len(self.params)))
        first = local(self.params[0])
        # made once: a tensor built from a list on every sample would be a blocking host-to-device copy
        self.sizes = torch.tensor([sum(p.numel() for p in params) for _, params in self.groups],
                                  dtype=torch.float32, device=first.device)
        return None

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """Record the norms at every `period`-th step (after the optimizer step)."""
        if step % self.period:
            return
        norms_P = torch.stack(torch._foreach_norm([local(p) for p in self.params]))
        (norms_P,), _, _ = self.shards.combine(self.all_present, [norms_P])
        square_P = norms_P.float().square()
        squares = torch.stack([square_P[a:b].sum() for a, b in self.spans])
        norm = squares.sqrt()
        rms = (squares / self.sizes).sqrt()
        both = to_host(torch.stack([norm, rms]))
        self.ctx.recorder.submit(WEIGHT_NORM, {"name": [n for n, _ in self.groups],
                                               "norm": HostSlice(both, 0), "rms": HostSlice(both, 1)},
                                 len(self.groups), step=step)
