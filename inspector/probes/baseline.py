"""A healthy baseline for detectors: the detector must not learn the fault.

A detector that scores each value against a window of *all* its past values absorbs an anomaly
that lasts: after a few samples of a collapsed head (or a loss plateau) the window is mostly
anomalous and the anomaly reads as normal. `HealthyBaseline` keeps only the values its detector
judged healthy; the detector scores, decides, and only then calls `add` for a healthy value.

Policy for slow legitimate drift: the window rolls over the last `window` *healthy* values, so a
drift slow enough that each new value still passes the detector's test (loss falling as training
learns, attention heads slowly specialising) moves the baseline with it. A step change never
does: values judged anomalous are not added, however long they last, so a lasting anomaly stays
flagged until the values come back. A detector that wants to judge changes *within* a lasting
anomaly (a second loss spike on top of a plateau) keeps a second baseline for that regime
(see `anomalies.LossSpikeDetector`).
"""
from __future__ import annotations

from collections import deque

import numpy as np

MAD_TO_SIGMA = 1.4826
"""Scale that makes the median absolute deviation estimate a normal distribution's sigma."""


class HealthyBaseline:
    """Robust median / spread of the last `window` values judged healthy.

    `ready` once `min_history` healthy values were added; non-finite values are never stored.
    """

    def __init__(self, window: int = 100, min_history: int = 20) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.min_history = min_history

    def __len__(self) -> int:
        return len(self.values)

    @property
    def ready(self) -> bool:
        """True when enough healthy values were seen to judge a new one."""
        return len(self.values) >= self.min_history

    def median(self) -> float:
        """Median of the healthy values (nan when there are none)."""
        if not self.values:
            return float("nan")
        return float(np.median(np.fromiter(self.values, float)))

    def score(self, x: float) -> tuple[float, float]:
        """(robust z of `x`, median of the baseline); (0, nan) until `ready`.

        z = (x - median) / (1.4826 MAD); a zero MAD falls back to 0.1 % of |median|.
        """
        if not self.ready:
            return 0.0, float("nan")
        hist = np.fromiter(self.values, float)
        med = float(np.median(hist))
        mad = float(np.median(np.abs(hist - med))) * MAD_TO_SIGMA
        scale = mad if mad > 0 else max(abs(med) * 1e-3, 1e-12)
        return (x - med) / scale, med

    def z(self, x: float) -> float:
        """Robust z-score of `x` against the healthy values: 0 until `ready`, inf for a non-finite `x`."""
        if not np.isfinite(x):
            return float("inf")
        return self.score(x)[0]

    def add(self, x: float) -> None:
        """Add a value the detector judged healthy (non-finite values are ignored)."""
        if np.isfinite(x):
            self.values.append(float(x))
