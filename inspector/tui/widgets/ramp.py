"""Colour ramp (viridis-like) and text sparklines shared by the widgets."""
from __future__ import annotations

from typing import Sequence

import numpy as np

_STOPS = np.array([
    (68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142),
    (31, 158, 137), (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37),
], dtype=np.float64)
_TICKS = "▁▂▃▄▅▆▇█"


def ramp_rgb(values: np.ndarray) -> np.ndarray:
    """RGB uint8 colours [..., 3] for `values` in [0, 1] (NaN is drawn as the lowest colour)."""
    v = np.nan_to_num(np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0))
    pos = v * (len(_STOPS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_STOPS) - 2)
    frac = (pos - lo)[..., None]
    return (_STOPS[lo] * (1 - frac) + _STOPS[lo + 1] * frac).round().astype(np.uint8)


def hex_colour(rgb: Sequence[int]) -> str:
    """'#rrggbb' for an RGB triple."""
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def text_sparkline(values: Sequence[float] | np.ndarray, width: int, lo: float | None = None,
                   hi: float | None = None) -> str:
    """The last `width` values as one line of block characters, scaled to lo..hi (default: their own range)."""
    arr = np.asarray(values, dtype=np.float64)[-width:] if width > 0 else np.empty(0)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return ""
    lo = float(arr.min()) if lo is None else lo
    hi = float(arr.max()) if hi is None else hi
    if hi - lo < 1e-12:
        return _TICKS[0] * arr.size
    idx = ((np.clip(arr, lo, hi) - lo) / (hi - lo) * (len(_TICKS) - 1)).round().astype(int)
    return "".join(_TICKS[i] for i in idx)
