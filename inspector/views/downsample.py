"""Server-side downsampling of long series that keeps their extremes (spikes stay visible).

MinMaxLTTB from `tsdownsample` (Rust): min/max preselection, then largest-triangle-three-buckets;
NaN-aware, so a non-finite loss is kept as a gap rather than dropped silently.
"""
from __future__ import annotations

import numpy as np
from tsdownsample import MinMaxLTTBDownsampler, NaNMinMaxLTTBDownsampler

DEFAULT_POINTS = 2000
"""Most points any series is drawn with."""

_PLAIN = MinMaxLTTBDownsampler()
_NAN = NaNMinMaxLTTBDownsampler()


def downsample_indices(x: np.ndarray, y: np.ndarray, n_out: int = DEFAULT_POINTS) -> np.ndarray:
    """Sorted indices of at most `n_out` points of (x, y) that keep the shape and the extremes.

    `x` must be sorted ascending. Series already short enough come back whole.
    """
    n = len(y)
    if n <= n_out:
        return np.arange(n)
    if n_out < 3:
        raise ValueError("n_out must be at least 3")
    xs = np.ascontiguousarray(x, dtype=np.float64)
    ys = np.ascontiguousarray(y, dtype=np.float64)
    finite = np.isfinite(ys)
    if finite.all():
        idx = _PLAIN.downsample(xs, ys, n_out=n_out)
    else:
        # The NaN-aware variant keeps NaNs; ±Inf would break the triangle areas, so keep them too.
        ys_nan = np.where(np.isinf(ys), np.nan, ys)
        idx = _NAN.downsample(xs, ys_nan, n_out=n_out)
        idx = np.union1d(idx, np.flatnonzero(np.isinf(ys)))
    return np.asarray(idx, dtype=np.int64)


def downsample_xy(x: np.ndarray, y: np.ndarray, n_out: int = DEFAULT_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) reduced to at most about `n_out` points by `downsample_indices`."""
    x = np.asarray(x)
    y = np.asarray(y)
    idx = downsample_indices(x, y, n_out)
    return x[idx], y[idx]
