"""Activation statistics on the device: one fixed-range histogram and summary row per module output.

`output_row` turns one module output into a single vector (`ROW` numbers, layout below) with no
host synchronisation: the histogram range is either host floats (steady state, `torch.histc`
directly) or, until the host copy of the warm-up range has landed, a device tensor applied as an
affine map before `torch.histc(y, BINS, 0, 1)`. Also: the deferred column (`HostSlice`) both
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


def warmup_range(x: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """[lo, hi] on the device: finite [min, max] widened by WARMUP_MARGIN each side (±1 if equal)."""
    mn = x.masked_fill(bad, math.inf).amin()
    mx = x.masked_fill(bad, -math.inf).amax()
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
    """
    x = x.detach()
    xf = x if x.dtype == torch.float32 else x.float()
    n = xf.numel()
    bad = ~torch.isfinite(xf)
    nonfinite = bad.sum()
    n_fin = (n - nonfinite).clamp(min=1).float()
    if lohi_dev is None:
        lohi_dev = warmup_range(xf, bad)
    xn = xf.masked_fill(bad, math.nan)
    if lohi_host is not None:
        lo, hi = lohi_host
        counts = torch.histc(xn, BINS, lo, hi)
        under, over = (xn < lo).sum(), (xn > hi).sum()
    else:
        y = (xn - lohi_dev[0]) / (lohi_dev[1] - lohi_dev[0])
        counts = torch.histc(y, BINS, 0.0, 1.0)
        under, over = (y < 0).sum(), (y > 1).sum()
        del y
    width = xf.shape[-1] if xf.dim() else 1
    mn_D, mx_D = torch.aminmax(xn.reshape(-1, width), dim=0)
    dead = ((mx_D <= DEAD_EPS) & (mn_D >= -DEAD_EPS)).float().mean()
    if bounds is not None:
        tol = BOUND_TOL * (bounds[1] - bounds[0]) / 2
        saturated = ((xn <= bounds[0] + tol) | (xn >= bounds[1] - tol)).sum() / n_fin
    mean = torch.nansum(xn) / n_fin
    xn = torch.where(bad, mean, xn)  # the mean leaves min, max and the deviations unchanged; no .item()
    mn, mx = torch.aminmax(xn)
    dev = xn.sub_(mean)
    std = torch.linalg.vector_norm(dev) / n_fin.sqrt()
    if bounds is None:
        saturated = (dev.abs_() > OUTLIER_STD * std).sum() / n_fin
    moments = torch.stack([mean, std, mn, mx])
    moments = torch.where(nonfinite < n, moments, torch.full_like(moments, math.nan))
    acc = accumulate_dtype(xf.device)
    row = torch.cat([counts.to(acc), torch.stack([under, over, nonfinite]).to(acc),
                     lohi_dev.to(acc), moments.to(acc), torch.stack([dead, saturated]).to(acc)])
    return row, lohi_dev


def host_range(row: np.ndarray) -> tuple[float, float] | None:
    """The (lo, hi) of a host row when usable as a histogram range, else None."""
    lo, hi = float(row[LO]), float(row[HI])
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and hi > lo else None
