"""Gradient views against what the synthetic run wrote (numpy oracle: the same formulas)."""
from __future__ import annotations

import numpy as np
import pytest

from inspector.views import open_live
from inspector.views.downsample import bin_columns
from inspector.views.gradients import grad_groups, grad_heatmap, grad_lines, group_detail
from tests.synthetic_run import PARAMS, SyntheticSpec, write_synthetic_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("grad")
    write_synthetic_run(path, SyntheticSpec(steps=60, hist_every=10))
    live = open_live(path)
    yield live
    live.close()


def written_norm(i: int, s: int, steps: int = 60) -> float:
    return 0.1 * (i + 1) * (1 + s / steps)


def test_groups_in_layer_order(run):
    assert grad_groups(run) == sorted(PARAMS, key=lambda n: (int(n.split(".")[1]), n))


def test_norm_heatmap_matches_written(run):
    hm = grad_heatmap(run, "norm")
    assert list(hm.steps) == list(range(0, 60, 10))
    expected = np.array([[written_norm(PARAMS.index(name), s) for s in hm.steps] for name in hm.rows])
    np.testing.assert_allclose(hm.z, expected)
    var = grad_heatmap(run, "var")
    np.testing.assert_allclose(var.z, expected ** 2 / 100)


def test_unknown_stat_is_refused(run):
    with pytest.raises(ValueError, match="unknown gradient statistic"):
        grad_heatmap(run, "nope")


def test_update_ratio_lines_and_detail(run):
    lines = grad_lines(run, "update_ratio")
    assert set(lines) == set(PARAMS)
    for name, df in lines.items():
        np.testing.assert_allclose(df["value"], 1e-3 * (PARAMS.index(name) + 1))
    detail = group_detail(run, PARAMS[1])
    np.testing.assert_allclose(detail["norm"], [written_norm(1, s) for s in detail["step"]])
    np.testing.assert_allclose(detail["max_abs"], detail["norm"] / 3)


def test_bin_columns_keeps_spikes_and_bounds_width():
    rng = np.random.default_rng(0)
    z = rng.random((3, 10_000))
    z[1, 7_777] = 50.0
    steps = np.arange(10_000) * 10
    bs, bz = bin_columns(steps, z, 500, "max")
    assert bz.shape == (3, 500) and len(bs) == 500
    assert bz.max() == 50.0 and np.argmax(bz.max(0)) == np.searchsorted(bs, 77_770, side="right") - 1
    _, mean = bin_columns(steps, z, 500, "mean")
    np.testing.assert_allclose(mean[0, 0], z[0, :20].mean())


def test_run_without_grad_stats_is_empty(tmp_path):
    from inspector.store.recorder import Recorder

    with Recorder(tmp_path, name="bare") as rec:
        rec.scalar("loss", 1.0, step=0)
    live = open_live(tmp_path)
    assert grad_groups(live) == [] and grad_heatmap(live).empty and grad_lines(live) == {}
    assert group_detail(live, "x").empty
    live.close()
