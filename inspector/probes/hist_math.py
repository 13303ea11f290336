"""Activation statistics on the device: one histogram and summary row per module output.

`output_row` turns one module output into a single vector (`ROW` numbers, layout below) with no
host synchronisation. The histogram's range follows the data (`follow_range`): it is decided on
the device for each sample from the output's own finite min and max, so every finite value is
binned (under/overflow stay 0, kept for the record's format) and a drifting output never leaves
its histogram. Non-finite values are counted apart. Binning: bin positions in float32, then
`bincount` on CPU and `torch.histc` elsewhere (see `output_row`).
"""
from __future__ import annotations

import math

import torch
from torch import nn


BINS = 64
"""Histogram bins per module output (fixed)."""
MARGIN = 0.10
"""A new range is the output's finite [min, max] widened by this fraction of its width each side."""
KEEP_FILL = 0.5
"""A range is kept while the output's values span at least this fraction of it (else re-ranged)."""
TINY_WIDTH = 1e-30
"""Outputs whose finite values span no more than this get the range [value - 1, value + 1]."""
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


def follow_range(mn: torch.Tensor, mx: torch.Tensor, old: torch.Tensor | None) -> torch.Tensor:
    """The histogram range [lo, hi] (device, [2]) for an output whose finite min and max are mn, mx.

    The previous sample's range is kept while it still holds every finite value and the values span
    at least `KEEP_FILL` of it (stable bins, so a steady output's heatmap needs no re-binning);
    otherwise the range becomes [mn, mx] widened by `MARGIN` each side (±1 when mn == mx). Decided
    on the device, for this very sample: no finite value ever falls outside the recorded range, so
    the histogram follows drifting data at once, with nothing read back to the host. An output
    with no finite value keeps the previous range (or gets [inf, -inf], which bins nothing).
    """
    width = mx - mn
    pad = torch.where(width > TINY_WIDTH, width * MARGIN, torch.ones_like(width))
    fresh = torch.stack([mn - pad, mx + pad])
    if old is None:
        return fresh
    usable = torch.isfinite(old).all() & (old[1] > old[0])
    holds = (mn >= old[0]) & (mx <= old[1]) & (width >= KEEP_FILL * (old[1] - old[0]))
    keep = usable & ((mn > mx) | holds)  # mn > mx: no finite value in this sample
    return torch.where(keep, old, fresh)


def output_row(x: torch.Tensor, lohi_old: torch.Tensor | None,
               bounds: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row [ROW], lohi [2]) for one module output; see the module docstring and `ROW`'s layout.

    - lo, hi: `follow_range` of this output's finite min/max and the previous sample's `lohi_old`.
    - counts: the finite values over BINS equal bins of [lo, hi] (a value equal to `hi` falls in
      the last bin); underflow, overflow: 0, the range holds every finite value; nonfinite: the
      count of NaN and ±inf elements.
    - mean, std (population), min, max: over the finite elements (NaN when there are none).
    - dead_frac: fraction of units (last dimension) with |x| <= DEAD_EPS at every position.
    - saturated_frac: bounded outputs: fraction of elements within BOUND_TOL of the half-range of
      a bound (|tanh| >= 0.99); unbounded outputs: fraction beyond OUTLIER_STD std of the mean.

    Cost: about a dozen passes over the output, almost all plain float arithmetic and reductions
    (boolean-mask ops and `torch.histc` are several times slower per element on CPU): `x - x` is 0
    where x is finite and NaN elsewhere, so `xn = x + (x - x)` has every non-finite element as NaN,
    which the NaN-filled min/max below leave out and the clamps carry along. Bin positions are
    `(x - lo) * (BINS / (hi - lo))` in float32 clamped to [0, BINS]; on CPU their floor is
    `bincount`ed with NaN as an extra bin (the non-finite count); elsewhere `torch.histc` over
    [0, BINS] bins them (it leaves NaN out; its range is a constant, so nothing is read back).
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
    lohi = follow_range(mn, mx, lohi_old)
    pos = torch.sub(xn, lohi[0]).mul_(BINS / (lohi[1] - lohi[0])).clamp_(0.0, float(BINS))
    if xf.device.type == "cpu":
        pos = pos.floor_().clamp_max_(BINS - 1).nan_to_num_(BINS)  # value == hi: the last bin; NaN: bin BINS
        binned = torch.bincount(pos.reshape(-1).to(torch.int32), minlength=BINS + 1)
        nonfinite = binned[BINS]
        counts = binned[:BINS]
    else:  # bincount would read its input's max back to the host; histc leaves NaN out
        counts = torch.histc(pos, BINS, 0.0, float(BINS))
        nonfinite = torch.isnan(xn).sum()
    del pos
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
    outside_2 = torch.zeros(2, dtype=acc, device=xf.device)
    row = torch.cat([counts.to(acc), outside_2, nonfinite.reshape(1).to(acc), lohi.to(acc), moments.to(acc),
                     torch.stack([dead, saturated]).to(acc)])
    return row, lohi
