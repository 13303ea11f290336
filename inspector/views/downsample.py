"""Bounding what a view hands a UI: long series downsampled keeping their extremes (spikes stay
visible), heatmap columns binned, names in layer order.

MinMaxLTTB from `tsdownsample` (Rust): min/max preselection, then largest-triangle-three-buckets.
Non-finite values are never dropped: every run of consecutive NaN/±Inf points keeps at least its
first and last point (each, while there are at most `n_out` runs), so the UIs can mark them.
Heatmaps carry a matrix of `nonfinite_codes` beside their values, binned so that a bin holding any
non-finite cell stays marked.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
from tsdownsample import MinMaxLTTBDownsampler, NaNMinMaxLTTBDownsampler

DEFAULT_POINTS = 2000
"""Most points any series is drawn with."""

MAX_HEAT_STEPS = 500
"""Most step columns any heatmap is drawn with."""

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
        idx = np.union1d(idx, nonfinite_run_ends(ys, n_out))
    return np.asarray(idx, dtype=np.int64)


def nonfinite_run_ends(y: np.ndarray, limit: int = DEFAULT_POINTS) -> np.ndarray:
    """Indices of the first and last point of each run of consecutive non-finite values of `y`
    (runs of one point give one index), for at most `limit` runs (the first ones)."""
    bad = ~np.isfinite(np.asarray(y, dtype=np.float64))
    if not bad.any():
        return np.empty(0, np.int64)
    edges = np.diff(np.concatenate([[0], bad.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)[:limit]
    ends = np.flatnonzero(edges == -1)[:limit] - 1
    return np.union1d(starts, ends).astype(np.int64)


NONFINITE_LABELS = {1: "NaN", 2: "+Inf", 3: "−Inf"}
"""What a non-finite code means (0: finite or nothing recorded)."""


def nonfinite_codes(values: np.ndarray, recorded: np.ndarray | None = None) -> np.ndarray:
    """int8 codes of `values`: 1 NaN, 2 +Inf, 3 −Inf, 0 otherwise. A NaN counts only where
    `recorded` is True (default: everywhere), so a cell with no record is not called NaN."""
    v = np.asarray(values, dtype=np.float64)
    codes = np.zeros(v.shape, dtype=np.int8)
    nan = np.isnan(v) if recorded is None else np.isnan(v) & recorded
    codes[nan] = 1
    codes[np.isposinf(v)] = 2
    codes[np.isneginf(v)] = 3
    return codes


def nonfinite_label(value: float) -> str:
    """"NaN", "+Inf", "−Inf", or "" for a finite number."""
    return NONFINITE_LABELS.get(int(nonfinite_codes(np.array([value]))[0]), "")


def bin_codes(codes: np.ndarray, max_cols: int = MAX_HEAT_STEPS) -> np.ndarray:
    """`nonfinite_codes` [rows, steps] binned like `bin_columns`: a bin takes the largest code in it,
    so a bin holding any non-finite cell stays marked."""
    n = codes.shape[1] if codes.ndim == 2 else 0
    if n <= max_cols:
        return codes
    starts = np.linspace(0, n, max_cols + 1).astype(int)[:-1]
    return np.maximum.reduceat(codes, starts, axis=1)


def downsample_xy(x: np.ndarray, y: np.ndarray, n_out: int = DEFAULT_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) reduced to at most about `n_out` points by `downsample_indices`."""
    x = np.asarray(x)
    y = np.asarray(y)
    idx = downsample_indices(x, y, n_out)
    return x[idx], y[idx]


def natural_key(name: str) -> list:
    """Sort key that orders "layers.10" after "layers.2"."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def bin_columns(steps: np.ndarray, z: np.ndarray, max_cols: int = MAX_HEAT_STEPS,
                how: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """Reduce a [rows, steps] matrix to at most `max_cols` columns by binning consecutive steps.

    `how` is "max" (keeps spikes: norms, variances), "min" (keeps dips: entropies) or "mean"
    (distributions); a bin is labelled with its first step. NaNs are ignored inside a bin.
    """
    n = z.shape[1] if z.ndim == 2 else 0
    if n <= max_cols:
        return steps, z
    edges = np.linspace(0, n, max_cols + 1).astype(int)
    starts = edges[:-1]
    with np.errstate(all="ignore"):
        if how == "max":
            out = np.fmax.reduceat(z, starts, axis=1)
        elif how == "min":
            out = np.fmin.reduceat(z, starts, axis=1)
        else:
            filled = np.nan_to_num(z, nan=0.0)
            counts = np.add.reduceat(np.isfinite(z).astype(float), starts, axis=1)
            out = np.add.reduceat(filled, starts, axis=1) / np.where(counts > 0, counts, np.nan)
    return steps[starts], out


def downsample_series(step: np.ndarray, value: np.ndarray, max_points: int = DEFAULT_POINTS) -> pd.DataFrame:
    """A `step`/`value` frame of at most `max_points` rows that keeps the series' extremes."""
    idx = downsample_indices(step, value, max_points)
    return pd.DataFrame({"step": np.asarray(step)[idx], "value": np.asarray(value, dtype=np.float64)[idx]})


def wide_matrix(df: pd.DataFrame, value: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(names in natural order, steps, values [names, steps], `nonfinite_codes` [names, steps]) from a
    long frame with `name`, `step` and `value` columns; the last record of a (name, step) wins.

    Unlike `pivot_table`, which drops a step whose values are all NaN, every recorded step stays.
    """
    last = df.drop_duplicates(["name", "step"], keep="last")
    names = sorted({str(n) for n in last["name"]}, key=natural_key)
    steps = np.unique(last["step"].to_numpy(np.int64))
    row = pd.Index(names).get_indexer(last["name"].astype(str))
    col = np.searchsorted(steps, last["step"].to_numpy(np.int64))
    z = np.full((len(names), len(steps)), np.nan)
    recorded = np.zeros(z.shape, dtype=bool)
    z[row, col] = last[value].to_numpy(np.float64)
    recorded[row, col] = True
    return names, steps, z, nonfinite_codes(z, recorded)
