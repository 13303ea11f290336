"""Activation statistics on the device: one fixed-range histogram and summary row per module output.

`output_row` turns one module output into a single vector (`ROW` numbers, layout below) with no
host synchronisation: the histogram range is either host floats (steady state, binned directly)
or, until the host copy of the warm-up range has landed, a device tensor applied as an affine map
before binning over [0, 1] (binning: `torch.histc`'s arithmetic then `bincount` on CPU,
`torch.histc` elsewhere; see `output_row`). Also: the deferred column (`HostSlice`) both
gradient and activation probes use to hand the writer thread slices of one host copy.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


BINS = 64
"""Histogram bins per module output (fixed)."""
WARMUP_MARGIN = 0.10
"""The warm-up range is the first sampled output's [min, max] widened by this fraction each side."""
DEAD_EPS = 1e-8
"""A unit is dead when |x| <= DEAD_EPS at every position of the batch."""
OUTLIER_STD = 6.0
"""For unbounded outputs, `saturated_frac` is the fraction of elements beyond this many std."""
BOUND_TOL = 0.01
"""For bounded outputs, saturated means within this fraction of the half-range of a bound."""

COUNTS = slice(0, BINS)
UNDER, OVER, NONFINITE, LO, HI, MEAN, STD, MIN, MAX, DEAD, SAT = range(BINS, BINS + 11)
ROW = BINS + 11
"""Layout of the vector `output_row` returns."""

_BOUNDED: dict[str, tuple[float, float]] = {
    "Tanh": (-1.0, 1.0), "Softsign": (-1.0, 1.0), "Sigmoid": (0.0, 1.0), "Hardsigmoid": (0.0, 1.0)}


def output_bounds(module: nn.Module) -> tuple[float, float] | None:
    """The output range of a bounded activation module (tanh, sigmoid, hardtanh, ...), else None."""
    name = type(module).__name__
    if name == "Hardtanh" or (hasattr(module, "min_val") and hasattr(module, "max_val")):
        return float(getattr(module, "min_val", -1.0)), float(getattr(module, "max_val", 1.0))
    return _BOUNDED.get(name)


def accumulate_dtype(device: torch.device) -> torch.dtype:
    """float64 for the stacked rows (exact counts above 2**24), float32 where float64 is missing."""
    return torch.float32 if device.type == "mps" else torch.float64


def warmup_range(mn: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
    """[lo, hi] on the device from the finite min and max: widened by WARMUP_MARGIN each side (±1 if
    equal; [inf, -inf], which `host_range` rejects, when there was no finite value)."""
    pad = torch.where(mx > mn, (mx - mn) * WARMUP_MARGIN, torch.ones_like(mx))
    return torch.stack([mn - pad, mx + pad])


def output_row(x: torch.Tensor, lohi_dev: torch.Tensor | None, lohi_host: tuple[float, float] | None,
               bounds: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row [ROW], lohi [2]) for one module output; see the module docstring and `ROW`'s layout.

    - counts/underflow/overflow: finite values only; a value equal to `hi` falls in the last bin.
    - mean, std (population), min, max: over the finite elements (NaN when there are none).
    - dead_frac: fraction of units (last dimension) with |x| <= DEAD_EPS at every position.
    - saturated_frac: bounded outputs: fraction of elements within BOUND_TOL of the half-range of
      a bound (|tanh| >= 0.99); unbounded outputs: fraction beyond OUTLIER_STD std of the mean.

    Cost: about a dozen passes over the output, almost all plain float arithmetic and reductions
    (boolean-mask ops and `torch.histc` are several times slower per element on CPU): `x - x` is 0
    where x is finite and NaN elsewhere, so `xn = x + (x - x)` has every non-finite element as NaN,
    which comparisons, histc and the NaN-filled min/max below leave out. On CPU the histogram is a
    `bincount` of bin indices computed as `torch.histc` computes them, `(x - lo) * BINS / (hi - lo)`
    in float32, of the output clamped to [lo, hi] (under/overflow then taken back out of the end
    bins), with NaN as an extra bin: the non-finite count. On other devices `torch.histc`.
    """
    x = x.detach()
    xf = x if x.dtype == torch.float32 else x.float()
    n = xf.numel()
    xn = torch.sub(xf, xf).add_(xf)              # x where finite, NaN where not
    fill = torch.nan_to_num(xn, nan=math.inf, posinf=math.inf, neginf=-math.inf)
    mn = fill.amin()
    torch.nan_to_num(xn, nan=-math.inf, posinf=math.inf, neginf=-math.inf, out=fill)
    mx = fill.amax()
    del fill
    if lohi_dev is None:
        lohi_dev = warmup_range(mn, mx)
    if lohi_host is not None:
        lo, hi = lohi_host
        v, vlo, vhi = xn, lo, hi
    else:
        v, vlo, vhi = (xn - lohi_dev[0]) / (lohi_dev[1] - lohi_dev[0]), 0.0, 1.0
    under, over = (v < vlo).sum(), (v > vhi).sum()
    if xf.device.type == "cpu":
        span = float(np.float32(vhi) - np.float32(vlo))  # as histc computes it, in float32
        pos = v.clamp(vlo, vhi).sub_(vlo).mul_(BINS).div_(span)
        pos = pos.floor_().clamp_max_(BINS - 1).nan_to_num_(BINS)  # value == hi: the last bin; NaN: bin BINS
        binned = torch.bincount(pos.reshape(-1).to(torch.int32), minlength=BINS + 1)
        del pos
        nonfinite = binned[BINS]
        counts = binned[:BINS].clone()
        counts[0] -= under
        counts[BINS - 1] -= over
    else:  # bincount would read its input's max back to the host; histc leaves NaN out
        counts = torch.histc(v, BINS, vlo, vhi)
        nonfinite = torch.isnan(xn).sum()
    del v
    n_fin = (n - nonfinite).clamp(min=1).float()
    acc = accumulate_dtype(xf.device)
    width = xf.shape[-1] if xf.dim() else 1
    absmax_D = xn.reshape(-1, width).abs().amax(dim=0)   # NaN (not dead) where a unit has a non-finite value
    dead = (absmax_D <= DEAD_EPS).float().mean()
    if bounds is not None:
        tol = BOUND_TOL * (bounds[1] - bounds[0]) / 2
        saturated = ((xn <= bounds[0] + tol) | (xn >= bounds[1] - tol)).sum() / n_fin
    mean = torch.nansum(xn) / n_fin
    dev = xn.sub_(mean).nan_to_num_(0.0, math.inf, -math.inf)  # deviations; 0 at non-finite elements
    std = torch.linalg.vector_norm(dev) / n_fin.sqrt()
    if bounds is None:
        saturated = (dev.abs_() > OUTLIER_STD * std).sum() / n_fin
    moments = torch.stack([mean, std, mn, mx])
    moments = torch.where(nonfinite < n, moments, torch.full_like(moments, math.nan))
    row = torch.cat([counts.to(acc), torch.stack([under, over, nonfinite]).to(acc),
                     lohi_dev.to(acc), moments.to(acc), torch.stack([dead, saturated]).to(acc)])
    return row, lohi_dev


def host_range(row: np.ndarray) -> tuple[float, float] | None:
    """The (lo, hi) of a host row when usable as a histogram range, else None."""
    lo, hi = float(row[LO]), float(row[HI])
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and hi > lo else None
