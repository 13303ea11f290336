"""Attention collapse: a head whose entropy falls far below its healthy past, or whose mass sits
on one token. Host-side bookkeeping over the small per-head statistics the probe copies back.

Each head is judged against a `HealthyBaseline` of its own entropies *while it was healthy*:
samples judged collapsed never enter it, so a head that stays collapsed stays flagged (every
sample reports `collapsed=True`) instead of becoming its own new normal after a few samples.
A collapsed head clears when its entropy is back above `RECOVER_RATIO` × that baseline and its
mass no longer sits on one token (hysteresis: a head hovering at the threshold does not flap).
Slow drift (heads specialising as training goes on) is followed through the healthy samples.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from inspector.probes.baseline import HealthyBaseline

ENTROPY_RATIO = 0.3
"""Collapsed when entropy < ENTROPY_RATIO × the median of the head's healthy past entropies."""
RECOVER_RATIO = 0.5
"""A collapsed head recovers when entropy ≥ RECOVER_RATIO × that median (and it is no sink)."""
MIN_HISTORY = 3
"""Healthy samples a head needs before the entropy test applies."""
SINK_WEIGHT = 0.9
"""Collapsed when the mean row maximum (rows with a few visible keys left out) reaches this…"""
SINK_MIN_KEYS = 8
"""…and some query row sees at least this many keys (so one-key rows do not count as collapse)."""


@dataclass
class HeadVerdict:
    """The collapse test of one head at one sample: its state after the sample, whether the
    collapse began at this sample, why, and the healthy median it was judged against."""

    collapsed: bool
    newly: bool
    reason: str
    median_entropy: float


@dataclass
class CollapseTracker:
    """Per (module, head) healthy entropy baseline and collapse state; `update` scores one sample."""

    window: int = 100
    baselines: dict[tuple[str, int], HealthyBaseline] = field(default_factory=dict)
    state: dict[tuple[str, int], bool] = field(default_factory=dict)

    @property
    def history(self) -> dict[tuple[str, int], deque]:
        """The healthy entropies kept per head."""
        return {key: b.values for key, b in self.baselines.items()}

    def update(self, module: str, head: int, entropy: float, sink_weight: float,
               max_visible: float) -> HeadVerdict:
        """Score one head's sample against its healthy past; a healthy sample then joins it."""
        key = (module, head)
        base = self.baselines.setdefault(key, HealthyBaseline(self.window, MIN_HISTORY))
        median = base.median()
        was = self.state.get(key, False)
        if not np.isfinite(entropy):
            # A NaN in the model is the anomalies probe's to report (with its module), not a collapse
            # of every head at once: such a sample is not judged and leaves the head's state as it was.
            return HeadVerdict(was, False, "still collapsed (sample not finite)" if was else "", median)
        sink = max_visible >= SINK_MIN_KEYS and sink_weight >= SINK_WEIGHT
        low = base.ready and median > 0 and entropy < (RECOVER_RATIO if was else ENTROPY_RATIO) * median
        reason = ""
        if low:
            ratio = RECOVER_RATIO if was else ENTROPY_RATIO
            reason = f"entropy {entropy:.3f} nats < {ratio:g} x its healthy median {median:.3f}"
        elif sink:
            reason = f"{sink_weight:.0%} of each row's mass on one token"
        collapsed = bool(reason)
        if not collapsed:
            base.add(float(entropy))
        self.state[key] = collapsed
        return HeadVerdict(collapsed, collapsed and not was, reason, median)
