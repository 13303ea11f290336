"""Stretches of recorded steps on which an expert is starved (no token) or hot (`HOT_FACTOR` times its
balanced share): the state behind the experts probe's `expert_starved` / `expert_hot` anomalies."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STARVED_STEPS = 50
"""Training steps without a token (on every step recorded) after which an expert is starved."""
STARVED_MIN_SAMPLES = 5
"""Recorded steps with zero tokens an expert must also have before it is reported (sparse sampling)."""
HOT_FACTOR = 3.0
"""An expert is hot while it gets at least this many times its balanced share (the layer's tokens per
expert): an absolute anchor, so a lasting overload never becomes its own baseline."""


@dataclass
class _Streak:
    """Per expert (of one router, or one row per router): the step its run of empty recorded steps
    began (-1: none), the number of recorded steps in that run, and whether the run was reported."""

    since: np.ndarray
    seen: np.ndarray
    told: np.ndarray

    @classmethod
    def empty(cls, shape: int | tuple[int, ...]) -> "_Streak":
        return cls(np.full(shape, -1, dtype=np.int64), np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=bool))

    def update_flags(self, step: int, flagged: np.ndarray) -> np.ndarray:
        """Add one recorded step's per-expert condition; True for the experts whose stretch of recorded
        steps with the condition has just become long enough (`STARVED_STEPS` steps, `STARVED_MIN_SAMPLES` samples)."""
        self.since = np.where(flagged, np.where(self.since < 0, step, self.since), -1)
        self.seen = np.where(flagged, self.seen + 1, 0)
        due = flagged & ~self.told & (step - self.since + 1 >= STARVED_STEPS) & (self.seen >= STARVED_MIN_SAMPLES)
        self.told = flagged & (self.told | due)
        return due


@dataclass
class _RouterStreaks:
    """The `_Streak` rows of every router with the same number of experts, one row per router (added
    as routers appear): a recorded step updates all of them at once."""

    experts: int
    streak: _Streak = None  # type: ignore[assignment]
    rows: dict[str, int] = field(default_factory=dict)

    quiet: bool = True
    """No router has a stretch going (every `since` is -1): a step flagging nothing changes nothing."""

    def __post_init__(self) -> None:
        self.streak = _Streak.empty((0, self.experts))

    def update(self, step: int, names: list[str], flagged_RE: np.ndarray) -> np.ndarray:
        """`_Streak.update_flags` of the routers `names` (rows of `flagged_RE`); the due experts [R, E]."""
        idx = [self.rows.setdefault(n, len(self.rows)) for n in names]
        grow = len(self.rows) - self.streak.since.shape[0]
        if grow > 0:
            more = _Streak.empty((grow, self.experts))
            self.streak = _Streak(*(np.concatenate([a, b]) for a, b in
                                    zip((self.streak.since, self.streak.seen, self.streak.told),
                                        (more.since, more.seen, more.told))))
        if not flagged_RE.any():
            if not self.quiet:     # every stretch of these routers ends; the others' go on
                self.streak.since[idx], self.streak.seen[idx], self.streak.told[idx] = -1, 0, False
                self.quiet = bool((self.streak.since < 0).all())
            return np.zeros(flagged_RE.shape, dtype=bool)
        self.quiet = False
        if idx == list(range(len(self.rows))):           # every router, in order: no gather
            return self.streak.update_flags(step, flagged_RE)
        sub = _Streak(self.streak.since[idx], self.streak.seen[idx], self.streak.told[idx])
        due = sub.update_flags(step, flagged_RE)
        self.streak.since[idx], self.streak.seen[idx], self.streak.told[idx] = sub.since, sub.seen, sub.told
        return due

    def of(self, name: str) -> _Streak:
        """The row of router `name` (views)."""
        r = self.rows[name]
        return _Streak(self.streak.since[r], self.streak.seen[r], self.streak.told[r])


def hot_flags(counts: np.ndarray) -> np.ndarray:
    """Per expert (of each row): at least `HOT_FACTOR` times the balanced share of this step's tokens."""
    counts = np.asarray(counts, dtype=np.float64)
    mean = counts.mean(axis=-1, keepdims=True) if counts.size else np.zeros(counts.shape[:-1] + (1,))
    return (counts >= HOT_FACTOR * mean) & (mean > 0)
