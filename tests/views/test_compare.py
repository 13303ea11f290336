"""Compare views: the same series of several runs."""
from __future__ import annotations

import numpy as np
import pytest

from inspector.views import open_live
from inspector.views.compare import COMPARE_METRICS, compare_series
from inspector.views.series import grad_norm_name
from tests.synthetic_run import SyntheticSpec, write_synthetic_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    wa = write_synthetic_run(root / "a", SyntheticSpec(steps=40))
    wb = write_synthetic_run(root / "b", SyntheticSpec(steps=30, seed=5, with_experts=False))
    a, b = open_live(root / "a"), open_live(root / "b")
    yield (a, wa), (b, wb)
    a.close(), b.close()


def test_loss_and_step_time_of_each_run(runs):
    for run, written in runs:
        loss = compare_series(run, "loss")
        np.testing.assert_allclose(loss["value"], written.loss[0])
        ms = compare_series(run, "step_ms")
        np.testing.assert_allclose(ms["value"], written.step_ms[0])
        assert grad_norm_name(run) == "grad_norm/global"
        gn = compare_series(run, "grad_norm")
        np.testing.assert_allclose(gn["value"], 1.0 + 0.1 * np.sin(gn["step"].to_numpy() / 5))


def test_imbalance_is_layer_mean_and_empty_without_experts(runs):
    (a, wa), (b, _) = runs
    imb = compare_series(a, "imbalance")
    expected = [float(np.mean(c.max(1) / c.mean(1))) for _, c in sorted(wa.expert_counts.items())]
    np.testing.assert_allclose(imb["value"], expected)
    assert compare_series(b, "imbalance").empty


def test_unknown_metric(runs):
    assert set(COMPARE_METRICS) == {"loss", "grad_norm", "step_ms", "imbalance"}
    with pytest.raises(ValueError):
        compare_series(runs[0][0], "nope")
