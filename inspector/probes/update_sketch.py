"""Every step's update/weight ratio per parameter, estimated from a fixed strided sample of its elements.

The exact ratio ||w_after - w_before|| / ||w_before|| needs a copy of every weight around the optimizer
step (the gradients probe takes one on sampled steps only). A flight recorder wants it on every step,
so this keeps at most `KEEP` elements of each tensor instead: the same positions on every step (a
stride coprime with the tensor's last dimension, so a matrix is sampled across all its columns),
copied in the optimizer's pre-hook and subtracted in its post-hook. Each sampled element stands for
`stride` elements, so per-group sums of squares scale by the stride; for the dense updates of Adam
and SGD the estimate is within a few percent of the exact ratio (tested against it). Memory:
`KEEP` elements per tensor; time: three foreach launches over those samples per step.
"""
from __future__ import annotations

import math

import torch

from inspector.probes.grad_math import local, norms

KEEP = 4096
"""Elements kept per parameter tensor (all of them below that)."""


def _stride(numel: int, last_dim: int) -> int:
    """A stride leaving at most `KEEP` of `numel` elements, coprime with the last dimension."""
    stride = max(1, -(-numel // KEEP))
    while stride > 1 and math.gcd(stride, max(last_dim, 1)) != 1:
        stride += 1
    return stride


class UpdateSketch:
    """Strided samples of the parameters' local shards, held across one optimizer step."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self._params = params
        self.strides = [_stride(local(p).numel(), local(p).shape[-1] if local(p).dim() else 1) for p in params]
        self._before: list[torch.Tensor] | None = None
        self._present: tuple[int, ...] = ()
        self._scales: dict[tuple[tuple[int, ...], torch.device, torch.dtype], torch.Tensor] = {}

    def _samples(self, present: tuple[int, ...]) -> list[torch.Tensor]:
        return [local(self._params[i]).detach().reshape(-1)[::self.strides[i]] for i in present]

    def before(self, present: tuple[int, ...]) -> None:
        """Copy the samples of the parameters `present` (call before the optimizer's update)."""
        self._present = present
        self._before = torch._foreach_mul(self._samples(present), 1.0)

    def after(self) -> tuple[tuple[int, ...], torch.Tensor, torch.Tensor] | None:
        """(present, sampled ||Δw|| per tensor, sampled ||w_before|| per tensor), each already scaled by
        sqrt(stride) so that group sums of squares estimate the whole tensors'; None without `before`."""
        before, self._before = self._before, None
        if before is None:
            return None
        weight_P = norms(before)
        torch._foreach_sub_(before, self._samples(self._present))
        delta_P = norms(before)
        key = (self._present, delta_P.device, delta_P.dtype)
        scale_P = self._scales.get(key)
        if scale_P is None:
            if len(self._scales) > 16:
                self._scales.clear()
            scale_P = self._scales[key] = torch.tensor([math.sqrt(self.strides[i]) for i in self._present],
                                                       dtype=delta_P.dtype, device=delta_P.device)
        return self._present, delta_P * scale_P, weight_P * scale_P

    def clear(self) -> None:
        """Forget a copy whose post-hook never came."""
        self._before = None
