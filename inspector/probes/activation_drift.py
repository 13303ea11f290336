"""Activations drifting out of their healthy range, judged per module against its own healthy past.

The judged value is a sample's peak magnitude, max(|min|, |max|) of the module's output. A sample
drifts when its peak exceeds `DRIFT_RATIO` x the median of the module's healthy samples and its
robust z-score (`HealthyBaseline`) exceeds `DRIFT_Z`. Drifted samples never enter the baseline,
so a lasting drift stays flagged; it is reported once at onset and cleared when a sample is back
under `RECOVER_RATIO` x the median. Slow healthy growth (weights growing as training learns) moves
the baseline, sample by sample, as long as each sample passes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from inspector.probes.baseline import HealthyBaseline

DRIFT_RATIO = 4.0
DRIFT_Z = 10.0
RECOVER_RATIO = 2.0
MIN_SAMPLES = 5
"""Healthy samples a module needs before it is judged."""


@dataclass
class _Module:
    healthy: HealthyBaseline = field(default_factory=lambda: HealthyBaseline(window=20, min_history=MIN_SAMPLES))
    drifted: bool = False


@dataclass
class DriftTracker:
    """Per-module healthy baseline of the output's peak magnitude and the current drift flag."""

    modules: dict[str, _Module] = field(default_factory=dict)

    def update(self, module: str, lo: float, hi: float) -> float | None:
        """Judge one sample; the healthy median it left (a ratio's denominator) when drift starts now."""
        peak = max(abs(lo), abs(hi))
        if not math.isfinite(peak):
            return None  # non-finite values are the anomalies probe's
        st = self.modules.setdefault(module, _Module())
        z, median = st.healthy.score(peak)
        if st.drifted:
            if peak < RECOVER_RATIO * median:
                st.drifted = False
                st.healthy.add(peak)
            return None
        if z > DRIFT_Z and peak > DRIFT_RATIO * median:
            st.drifted = True
            return median
        st.healthy.add(peak)
        return None
