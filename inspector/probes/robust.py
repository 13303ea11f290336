"""Robust running statistics used by anomaly detection.

`RobustZ` scores a value and then learns it, whatever it was: fine for a statistic that is only
*shown*, wrong for a detector (a lasting anomaly becomes the new normal within a few samples).
Detectors use `baseline.HealthyBaseline`, which learns only the values judged healthy.
"""
from __future__ import annotations

from inspector.probes.baseline import HealthyBaseline


class RobustZ:
    """Robust z-score of a new value against a window of past ones: (x - median) / (1.4826 MAD).

    `score(x)` returns the score against the history *before* x, then adds x. Returns 0 until
    `min_history` values have been seen; non-finite values are scored inf and never stored.
    """

    def __init__(self, window: int = 100, min_history: int = 20) -> None:
        self._baseline = HealthyBaseline(window, min_history)
        self.values = self._baseline.values
        self.min_history = min_history

    def score(self, x: float) -> float:
        """Score `x` against the window, then append it."""
        z = self._baseline.z(x)
        self._baseline.add(x)
        return z
