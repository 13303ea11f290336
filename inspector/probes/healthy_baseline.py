"""A detector baseline that does not learn the fault: values judged anomalous never enter it."""
from __future__ import annotations

from collections import deque

import numpy as np


class HealthyBaseline:
    """Robust z-score, (x - median) / (1.4826 MAD), against the last `window` values that were *not*
    flagged (the caller adds a value with `add` only when it judged it healthy), so a sustained
    anomaly keeps being flagged instead of becoming the new normal."""

    def __init__(self, window: int = 100, min_history: int = 20) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.min_history = min_history

    def score(self, x: float) -> tuple[float, float]:
        """(robust z of `x`, median of the baseline); (0, NaN) until `min_history` healthy values."""
        if len(self.values) < self.min_history:
            return 0.0, float("nan")
        hist = np.fromiter(self.values, float)
        med = float(np.median(hist))
        mad = float(np.median(np.abs(hist - med))) * 1.4826
        scale = mad if mad > 0 else max(abs(med) * 1e-3, 1e-12)
        return (x - med) / scale, med

    def add(self, x: float) -> None:
        """Take a finite value judged healthy into the baseline."""
        if np.isfinite(x):
            self.values.append(float(x))
