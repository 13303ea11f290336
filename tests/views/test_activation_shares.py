"""Activation views show what each histogram holds: in-range, below, above and NaN/Inf shares per step
(oracle: numpy on the outputs the test captured, and hand counts for runs written record by record)."""
from __future__ import annotations

import numpy as np
import pytest

from inspector.store.recorder import Recorder
from inspector.views import open_live
from inspector.views.activations import histogram_over_time
from tests.activation_runs import DRIFT_MODULE, NAN_MODULE, NAN_STEP, STEPS, write_drift_run


@pytest.fixture(scope="module")
def drift(tmp_path_factory):
    run = write_drift_run(tmp_path_factory.mktemp("drift") / "run")
    live = open_live(run.path)
    yield run, live
    live.close()


def test_drifting_module_is_fully_inside_and_drawn_on_a_grid_holding_every_step(drift):
    run, live = drift
    h = histogram_over_time(live, DRIFT_MODULE)
    assert list(h.steps) == list(range(STEPS))
    np.testing.assert_array_equal(h.inside, 1.0)
    np.testing.assert_array_equal(h.below + h.above + h.nonfinite, 0.0)
    values = np.concatenate([run.captured[s][DRIFT_MODULE].ravel() for s in range(STEPS)])
    assert h.edges[0] <= values.min() and values.max() <= h.edges[-1]
    np.testing.assert_allclose(h.z.sum(0), 1.0)  # every step's mass is on the display grid


def test_nonfinite_share_and_the_step_histogram_with_its_own_bins(drift):
    from inspector.views.activations import histogram_at
    run, live = drift
    x = run.captured[NAN_STEP][NAN_MODULE]
    fin = x[np.isfinite(x)]
    h = histogram_over_time(live, NAN_MODULE)
    col = list(h.steps).index(NAN_STEP)
    assert h.nonfinite[col] == pytest.approx((x.size - fin.size) / x.size)
    assert h.inside[col] == pytest.approx(fin.size / x.size)
    at = histogram_at(live, NAN_MODULE, NAN_STEP)
    assert at.step == NAN_STEP and at.nonfinite == x.size - fin.size and at.total == x.size
    assert at.edges[0] <= fin.min() and fin.max() <= at.edges[-1]
    want, _ = np.histogram(fin, bins=at.edges)
    assert np.abs(at.counts - want).sum() <= 4  # float32 vs float64 at bin edges
    assert histogram_at(live, NAN_MODULE, 10_000).step == STEPS - 1  # the last one at or before


def test_a_fixed_range_run_shows_what_fell_outside(tmp_path):
    """Runs recorded with a range fixed at warm-up (before the range followed the data) still read."""
    from inspector.views.activations import histogram_at
    with Recorder(tmp_path, name="old") as rec:
        rec.histogram("activations/m", [6, 2], 0.0, 2.0, step=0, underflow=0, overflow=0)
        rec.histogram("activations/m", [1, 1], 0.0, 2.0, step=1, underflow=3, overflow=93)
        rec.submit("activation_stats", {"name": "m", "mean": 0.0, "std": 1.0, "min": 0.0, "max": 1.0, "dead_frac": 0.0,
                                        "saturated_frac": 0.0, "nonfinite": 2}, rows=1, step=1)
    live = open_live(tmp_path)
    h = histogram_over_time(live, "m")
    np.testing.assert_allclose(h.inside, [1.0, 2 / 100])
    np.testing.assert_allclose(h.below, [0.0, 3 / 100])
    np.testing.assert_allclose(h.above, [0.0, 93 / 100])
    np.testing.assert_allclose(h.nonfinite, [0.0, 2 / 100])
    np.testing.assert_allclose(h.z[:, 1], [0.01, 0.01])
    assert histogram_at(live, "m", 1).inside == pytest.approx(0.02)
    live.close()


def test_dead_layers_lists_the_layers_still_flagged(tmp_path):
    from inspector.views.activations import dead_layers
    with Recorder(tmp_path, name="dead") as rec:
        for s in range(6):
            rec.submit("activation_stats", {"name": ["a", "b"], "mean": 0.0, "std": 1.0, "min": 0.0, "max": 1.0,
                                            "dead_frac": [1.0 if s >= 2 else 0.0, 1.0 if 1 <= s <= 3 else 0.0],
                                            "saturated_frac": 0.0, "nonfinite": 0}, rows=2, step=s)
        for s in (2, 3, 4, 5):
            rec.anomaly("dead_layer", "a is dead", module="a", step=s)
        for s in (1, 2, 3):
            rec.anomaly("dead_layer", "b is dead", module="b", step=s)   # b recovered at step 4
    live = open_live(tmp_path)
    assert dead_layers(live) == {"a": 2}
    live.close()
