"""The dead-layer detector's judgement on sequences of dead fractions (its rules, one by one)."""
from __future__ import annotations

import pytest

from inspector.probes.dead_layer import HISTORY, DeadLayerTracker


def test_tracker_judges_against_its_healthy_baseline() -> None:
    t = DeadLayerTracker()
    # an output that is all zeros only at its first sample (a zero-initialised projection) is no dead layer
    verdicts = [t.update("zero_init", s, f) for s, f in enumerate([1.0, 0.0, 0.0, 0.01])]
    assert not any(v.dead for v in verdicts)
    # a layer with 30 % of its units dead while healthy: 92 % is not yet "most of the live units dead"…
    for s in range(5):
        assert not t.update("sparse", s, 0.3).dead
    assert not t.update("sparse", 5, 0.92).dead and not t.update("sparse", 6, 0.92).dead
    # …97 % is; flagged on the second such sample with the first as its onset, then for as long as it lasts
    assert not t.update("sparse", 7, 0.97).dead
    v = t.update("sparse", 8, 0.97)
    assert v.dead and v.newly and v.onset == 7 and v.steps == [7, 8]
    for s in range(9, 9 + 3 * HISTORY):
        v = t.update("sparse", s, 0.97)
        assert v.dead and not v.newly and v.steps == [s] and v.baseline == pytest.approx(0.3, abs=0.05)
    assert not t.update("sparse", 100, 0.3).dead  # recovered
