"""Colour ramps (viridis-like; alarm-low; diverging) and text sparklines shared by the widgets."""
from __future__ import annotations

from typing import Sequence

import numpy as np

_STOPS = np.array([
    (68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142),
    (31, 158, 137), (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37),
], dtype=np.float64)
VIRIDIS = _STOPS
ALARM_LOW = np.array([
    (128, 0, 38), (189, 0, 38), (227, 26, 28), (252, 78, 42), (253, 141, 60), (254, 178, 76),
    (254, 217, 118), (255, 237, 160), (255, 255, 204),
], dtype=np.float64)
"""Dark red at 0 (the alarming end: e.g. entropy near 0 is a collapsed head) to pale yellow at 1."""
DIVERGING = np.array([
    (5, 48, 97), (33, 102, 172), (67, 147, 195), (146, 197, 222), (247, 247, 247),
    (244, 165, 130), (214, 96, 77), (178, 24, 43), (103, 0, 31),
], dtype=np.float64)
"""Blue at 0 (e.g. a starved expert), near-white at 0.5 (the scale's centre), red at 1 (hot)."""
_TICKS = "▁▂▃▄▅▆▇█"


def ramp_rgb(values: np.ndarray, stops: np.ndarray = VIRIDIS) -> np.ndarray:
    """RGB uint8 colours [..., 3] for `values` in [0, 1] along `stops` (NaN is drawn as the lowest colour)."""
    v = np.nan_to_num(np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0))
    pos = v * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).round().astype(np.uint8)


def stops_for(alarm: str) -> np.ndarray:
    """The ramp for a `Scale.alarm`: alarm-low for "low", diverging for "both", viridis otherwise."""
    return {"low": ALARM_LOW, "high": ALARM_LOW[::-1], "both": DIVERGING}.get(alarm, VIRIDIS)


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
