"""Attention collapse: a head whose entropy falls far below its own history, or whose mass sits
on one token. Host-side bookkeeping over the small per-head statistics the probe copies back.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

ENTROPY_RATIO = 0.3
"""Collapsed when entropy < ENTROPY_RATIO × the median of the head's own past entropies."""
MIN_HISTORY = 3
"""Past samples a head needs before the entropy test applies."""
SINK_WEIGHT = 0.9
"""Collapsed when the mean row maximum (rows with a few visible keys left out) reaches this…"""
SINK_MIN_KEYS = 8
"""…and some query row sees at least this many keys (so one-key rows do not count as collapse)."""


@dataclass
class HeadVerdict:
    """The collapse test of one head at one sample."""

    collapsed: bool
    newly: bool
    reason: str
    median_entropy: float


@dataclass
class CollapseTracker:
    """Per (module, head) entropy history and collapse state; `update` scores one sample."""

    window: int = 100
    history: dict[tuple[str, int], deque] = field(default_factory=dict)
    state: dict[tuple[str, int], bool] = field(default_factory=dict)

    def update(self, module: str, head: int, entropy: float, sink_weight: float,
               max_visible: float) -> HeadVerdict:
        """Score one head's sample against its past, then add it to the history."""
        key = (module, head)
        past = self.history.setdefault(key, deque(maxlen=self.window))
        median = float(np.median(np.fromiter(past, float))) if past else float("nan")
        reason = ""
        if not np.isfinite(entropy):
            # A NaN in the model is the anomalies probe's to report (with its module), not a collapse
            # of every head at once: such a sample is not judged and leaves the head's state alone.
            return HeadVerdict(False, False, "", median)
        if len(past) >= MIN_HISTORY and median > 0 and entropy < ENTROPY_RATIO * median:
            reason = f"entropy {entropy:.3f} nats < {ENTROPY_RATIO:g} x its median {median:.3f}"
        elif max_visible >= SINK_MIN_KEYS and sink_weight >= SINK_WEIGHT:
            reason = f"{sink_weight:.0%} of each row's mass on one token"
        past.append(float(entropy))
        collapsed = bool(reason)
        newly = collapsed and not self.state.get(key, False)
        self.state[key] = collapsed
        return HeadVerdict(collapsed, newly, reason, median)
