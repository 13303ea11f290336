"""Loss spikes judged against a healthy baseline, reported once at onset.

A spike is a loss more than `LOSS_SPIKE_Z` robust deviations and `LOSS_SPIKE_RATIO` × the median
above the healthy baseline (`HealthyBaseline`, the last 100 losses judged healthy; nothing is judged
before 20 of them). What happens next:
- The loss stays high (a plateau): the run is *in* the spike; nothing more is reported and the
  plateau never enters the healthy baseline, however long it lasts.
- The loss comes back (below `LOSS_CLEAR_Z` deviations or `LOSS_CLEAR_RATIO` × the healthy
  median: hysteresis, so a loss hovering at the threshold is one spike, not many): the spike ends.
- The loss spikes again on top of the plateau: the plateau's own losses form a baseline of their
  own (a raised *level*, judged once `LEVEL_MIN_HISTORY` of them are in), so a second spike is
  reported against the raised level, and a return to the lower level ends both.
Falling losses (training learning fast) are healthy and move the baseline down with them.

While the loss still falls fast the window's median sits above today's loss and its spread is the
descent, not the noise: early in training a loss that jumped back to its untrained level
(2.76 -> 5.6 at step 61 of the `faults` sample, whose first 25 steps fell 5.6 -> 3.3) scored z = 5.4
against the window. So a loss is also judged against the *recent* level, the median of the last
`RECENT` healthy losses, on the noise scale of successive differences (1.4826 × median |Δ| / √2,
which a trend does not widen): a spike on either scale, with the same ratio bar, is a spike.
"""
from __future__ import annotations

import math

import numpy as np

from inspector.probes.baseline import MAD_TO_SIGMA, HealthyBaseline

LOSS_SPIKE_Z = 6.0
LOSS_SPIKE_RATIO = 1.5
LOSS_CLEAR_Z = 3.0
LOSS_CLEAR_RATIO = 1.2
WINDOW = 100
MIN_HISTORY = 20
LEVEL_MIN_HISTORY = 10
MAX_LEVELS = 4
"""The healthy baseline and at most three raised levels on top of it."""
RECENT = 20
"""Healthy losses that form the recent level."""


class LossSpikeDetector:
    """Feed every finite loss to `update`; it says when a spike begins."""

    def __init__(self) -> None:
        self.levels: list[HealthyBaseline] = [HealthyBaseline(WINDOW, MIN_HISTORY)]

    @property
    def healthy(self) -> HealthyBaseline:
        """The baseline of losses judged healthy (never holds a spike or a plateau after one)."""
        return self.levels[0]

    @property
    def in_spike(self) -> bool:
        """True while the loss has not come back from a spike."""
        return len(self.levels) > 1

    def update(self, loss: float) -> str | None:
        """Judge one loss; a description when a spike begins at it, else None."""
        if not math.isfinite(loss):
            return None
        while len(self.levels) > 1 and _cleared(self.levels[-2], loss):
            self.levels.pop()
        top = self.levels[-1]
        z = top.z(loss)
        median = top.median()
        what = "healthy" if top is self.healthy else "raised"
        recent_z, recent = _recent_score(top, loss)
        if top.ready and recent_z > LOSS_SPIKE_Z and loss > LOSS_SPIKE_RATIO * recent and not (
                z > LOSS_SPIKE_Z and loss > LOSS_SPIKE_RATIO * median):
            z, median, what = recent_z, recent, f"recent {what}"    # a spike above the recent level only
        if top.ready and z > LOSS_SPIKE_Z and loss > LOSS_SPIKE_RATIO * median:
            if len(self.levels) < MAX_LEVELS:
                raised = HealthyBaseline(WINDOW, LEVEL_MIN_HISTORY)
                raised.add(loss)
                self.levels.append(raised)
            else:
                top.add(loss)  # the deepest level learns its spikes: a cap, not a detector stuck on
            return f"robust z = {z:.1f} against the {what} median {median:.4g}"
        top.add(loss)
        return None


def _recent_score(base: HealthyBaseline, loss: float) -> tuple[float, float]:
    """(z of `loss` above the recent level on the successive-difference noise scale, that level)."""
    if len(base.values) < 2:
        return 0.0, float("nan")
    hist = np.fromiter(base.values, float)
    recent = float(np.median(hist[-RECENT:]))
    noise = MAD_TO_SIGMA * float(np.median(np.abs(np.diff(hist)))) / math.sqrt(2)
    noise = noise if noise > 0 else max(abs(recent) * 1e-3, 1e-12)
    return (loss - recent) / noise, recent


def _cleared(base: HealthyBaseline, loss: float) -> bool:
    """True when `loss` is back within the normal range of `base`, on the whole window's scale and on
    the recent level's (a loss still far above the recent level has not come back, however wide the
    window's spread)."""
    whole = base.z(loss) < LOSS_CLEAR_Z or loss < LOSS_CLEAR_RATIO * base.median()
    recent_z, recent = _recent_score(base, loss)
    return whole and (recent_z < LOSS_CLEAR_Z or not loss >= LOSS_CLEAR_RATIO * recent)
