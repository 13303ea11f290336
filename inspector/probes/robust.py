"""Robust running statistics used by anomaly detection."""
from __future__ import annotations

from collections import deque

import numpy as np


class RobustZ:
    """Robust z-score of a new value against a window of past ones: (x - median) / (1.4826 MAD).

    `score(x)` returns the score against the history *before* x, then adds x. Returns 0 until
    `min_history` values have been seen; non-finite values are scored inf and never stored.
    """

    def __init__(self, window: int = 100, min_history: int = 20) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.min_history = min_history

    def score(self, x: float) -> float:
        """Score `x` against the window, then append it."""
        if not np.isfinite(x):
            return float("inf")
        z = 0.0
        if len(self.values) >= self.min_history:
            hist = np.fromiter(self.values, float)
            med = float(np.median(hist))
            mad = float(np.median(np.abs(hist - med))) * 1.4826
            scale = mad if mad > 0 else max(abs(med) * 1e-3, 1e-12)
            z = (x - med) / scale
        self.values.append(float(x))
        return z
