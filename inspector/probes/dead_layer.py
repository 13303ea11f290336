"""Dead layers: a module whose units stop passing anything, judged against its own healthy past.

A unit is dead on a sample when it outputs 0 at every position of the batch (`dead_frac` of the
activations probe is the share of such units). A sample is *dead* when the units that were alive
in the module's healthy baseline have mostly died:

    dead_frac >= base + DEAD_SHARE * (1 - base),   base = median of the healthy samples' dead_frac

(0 before the first healthy sample, so a layer dead from its first sample is judged too). Dead
samples never enter the baseline (`HealthyBaseline`), so a layer that stays dead stays flagged;
a slow healthy drift of `dead_frac` (a few units retiring as training goes) moves the baseline.
A layer is flagged once `CONFIRM` sampled steps in a row are dead (one dead sample can be an
artefact, e.g. an output projection initialised to zero), with the first of them as its onset,
and stays flagged on every following sampled step until a sample is healthy again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from inspector.probes.baseline import HealthyBaseline

DEAD_SHARE = 0.9
"""Share of the baseline's live units that must be dead for a sample to count as dead."""
CONFIRM = 2
"""Dead sampled steps in a row before the layer is flagged (the onset is the first of them)."""
HISTORY = 20
"""Healthy samples the baseline keeps."""


@dataclass
class DeadVerdict:
    """One module's judgement at one sample: flagged steps to record (onset first when new)."""

    dead: bool
    newly: bool
    onset: int
    steps: list[int]
    threshold: float
    baseline: float


@dataclass
class _Module:
    healthy: HealthyBaseline = field(default_factory=lambda: HealthyBaseline(window=HISTORY, min_history=1))
    streak: list[int] = field(default_factory=list)
    dead: bool = False


@dataclass
class DeadLayerTracker:
    """Per-module healthy baseline of the dead fraction, the current run of dead samples, the flag."""

    modules: dict[str, _Module] = field(default_factory=dict)

    def update(self, module: str, step: int, frac: float) -> DeadVerdict:
        """Judge one sample of `module` (samples in step order) against its healthy past."""
        st = self.modules.setdefault(module, _Module())
        base = st.healthy.median() if len(st.healthy) else 0.0
        threshold = base + DEAD_SHARE * (1.0 - base)
        if not math.isfinite(frac):  # not judged: the non-finite value is another detector's
            return DeadVerdict(st.dead, False, st.streak[0] if st.streak else step, [], threshold, base)
        if frac < threshold:
            st.healthy.add(frac)
            st.streak.clear()
            st.dead = False
            return DeadVerdict(False, False, step, [], threshold, base)
        if len(st.streak) < CONFIRM:  # the onset and the steps that confirm it; later ones are not kept
            st.streak.append(step)
        if len(st.streak) < CONFIRM:
            return DeadVerdict(False, False, st.streak[0], [], threshold, base)
        newly = not st.dead
        st.dead = True
        return DeadVerdict(True, newly, st.streak[0], list(st.streak) if newly else [step], threshold, base)
