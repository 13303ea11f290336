"""The Activations page shows what each histogram holds (in range, below, above, NaN/Inf) in the title,
the hover and a line under the heatmap, on a real drifting run and on a run with a fixed range."""
from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import expect

from inspector.store.recorder import Recorder
from tests.activation_runs import NAN_MODULE, NAN_STEP, STEPS, write_drift_run
from tests.dash_app.conftest import dash_server
from tests.dash_app.helpers import wait_figure, wait_title

CUSTOM_JS = """(id) => { const gd = document.querySelector('#' + id + ' .js-plotly-plot');
  return gd._fullData[0].customdata.map((row) => Array.from(row, (cell) => Array.from(cell))); }"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("act-runs")
    drift = write_drift_run(root / "drift")
    with Recorder(root / "fixed", name="fixed") as rec:   # as runs recorded with a warm-up range look
        rec.histogram("activations/m", [6, 2], 0.0, 2.0, step=0)
        rec.histogram("activations/m", [1, 1], 0.0, 2.0, step=1, underflow=3, overflow=93)
        rec.submit("activation_stats", {"name": "m", "mean": 0.0, "std": 1.0, "min": 0.0, "max": 1.0,
                                        "dead_frac": 0.0, "saturated_frac": 0.0, "nonfinite": 2}, rows=1, step=1)
    with dash_server(root) as srv:
        yield srv, drift


def _open(page, srv, run):
    page.goto(f"{srv.url}/activations?run={run}")
    expect(page.locator("#run-header .status")).to_have_text("finished")


def test_in_range_share_in_title_line_and_hover_and_nonfinite_shown(page, server):
    srv, drift = server
    _open(page, srv, "drift")
    wait_title(page, "act-hist", f"step {STEPS - 1}: 100.0% of values in range")
    shares = wait_figure(page, "act-range")
    inside = next(t for t in shares["data"] if t["name"] == "in range")
    assert inside["x"] == list(range(STEPS)) and inside["y"] == [1.0] * STEPS
    page.locator("#act-module").click()
    page.get_by_role("option", name=NAN_MODULE, exact=True).click()
    x = drift.captured[NAN_STEP][NAN_MODULE]
    share = float(np.mean(~np.isfinite(x)))
    hist = wait_title(page, "act-hist", "NaN/Inf")
    assert f"{NAN_MODULE}: output histogram" in hist["title"]
    shares = wait_figure(page, "act-range", "f => f && f.data.some((t) => t.name === 'NaN/Inf')")
    bad = next(t for t in shares["data"] if t["name"] == "NaN/Inf")
    assert bad["y"][NAN_STEP] == pytest.approx(share) and bad["y"][0] == 0.0
    custom = np.array(page.evaluate(CUSTOM_JS, "act-hist"))       # [bins, steps, 4]: the hover's numbers
    np.testing.assert_allclose(custom[:, NAN_STEP, 1], 1 - share)
    np.testing.assert_allclose(custom[:, NAN_STEP, 3], share)
    np.testing.assert_allclose(custom[:, 0, 1], 1.0)
    box = page.locator("#act-hist .nsewdrag").bounding_box()     # hover the last step's column
    page.mouse.move(box["x"] + box["width"] * 0.97, box["y"] + box["height"] * 0.5)
    hover = page.locator("#act-hist .hovertext")
    expect(hover).to_contain_text(f"step {NAN_STEP}")
    expect(hover).to_contain_text(f"in range at this step {1 - share:.2%}")
    expect(hover).to_contain_text(f"NaN/Inf {share:.2%}")
    wait_title(page, "act-step", f"{NAN_MODULE} at step {NAN_STEP}")
    assert "NaN/Inf" in wait_title(page, "act-step", "NaN/Inf")["title"]
    assert page.errors == []


def test_fixed_range_run_says_how_little_its_histogram_holds(page, server):
    srv, _ = server
    _open(page, srv, "fixed")
    hist = wait_title(page, "act-hist", "step 1: 2.0% of values in range")
    assert "below range 3.0%" in hist["title"] and "above range 93.0%" in hist["title"]
    assert "NaN/Inf 2.0%" in hist["title"]
    shares = wait_figure(page, "act-range", "f => f && f.data.length === 4")
    got = {t["name"]: t["y"] for t in shares["data"]}
    np.testing.assert_allclose(got["in range"], [1.0, 0.02])
    np.testing.assert_allclose(got["above range"], [0.0, 0.93])
    step = wait_title(page, "act-step", "step 1")
    assert "2.0% in range" in step["title"] and "above 93.0%" in step["title"]
    assert page.errors == []
