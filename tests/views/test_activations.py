"""Activation views: histograms over time as fractions, dead fractions (numpy oracle)."""
from __future__ import annotations

import numpy as np
import pytest

from inspector.store.recorder import Recorder
from inspector.views import open_live
from inspector.views.activations import activation_modules, activation_stat_lines, histogram_over_time
from tests.synthetic_run import BINS, BLOCKS, SyntheticSpec, write_synthetic_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("act")
    write_synthetic_run(path, SyntheticSpec(steps=50, hist_every=10))
    live = open_live(path)
    yield live
    live.close()


def test_modules_and_histogram_fractions(run):
    assert activation_modules(run) == BLOCKS
    h = histogram_over_time(run, BLOCKS[0])
    assert h.z.shape == (BINS, 5) and list(h.steps) == [0, 10, 20, 30, 40]
    raw = run.reader.to_pandas("histogram")
    raw = raw[raw["name"] == f"activations/{BLOCKS[0]}"].sort_values("step")
    counts = np.stack([np.asarray(c, float) for c in raw["counts"]], axis=1)
    np.testing.assert_allclose(h.z, counts / counts.sum(0))
    np.testing.assert_allclose(h.edges, np.linspace(-4, 4, BINS + 1))


def test_changing_range_is_rebinned(tmp_path):
    with Recorder(tmp_path, name="rebin") as rec:
        rec.histogram("activations/m", [10, 10], 0.0, 2.0, step=0)     # uniform over [0, 2)
        rec.histogram("activations/m", [5, 5, 5, 5], 0.0, 4.0, step=1)  # uniform over [0, 4)
    live = open_live(tmp_path)
    h = histogram_over_time(live, "m")
    np.testing.assert_allclose(h.edges, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(h.z[:, 0], [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(h.z[:, 1], [0.25] * 4)
    live.close()


def test_dead_fraction_lines(run):
    lines = activation_stat_lines(run, "dead_frac")
    assert list(lines) == BLOCKS
    for i, name in enumerate(BLOCKS):
        np.testing.assert_allclose(lines[name]["value"], 0.01 * i)
        assert list(lines[name]["step"]) == [0, 10, 20, 30, 40]


def test_missing_module_is_empty(run):
    assert histogram_over_time(run, "nope").empty
