"""Dashboard, in Chromium: NaN steps are marked (never dropped) on the loss, grad-norm, gradient
heatmap and weight-norm charts, and the grad-norm charts draw the inferred clip threshold; on a
real engine run with non-finite steps (tests/nonfinite_run.py)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.dash_app.conftest import dash_server
from tests.dash_app.helpers import wait_figure
from tests.nonfinite_run import CLIP, LAST, POISONED, SKIPPED, write_nonfinite_run

MARK = "✕ NaN/Inf"
NAN_STEPS = [SKIPPED, *range(POISONED, LAST + 1)]

LAYOUT_JS = """
(id) => {
  const gd = document.querySelector('#' + id + ' .js-plotly-plot');
  return {shapes: (gd.layout.shapes || []).map((s) => ({y0: s.y0, y1: s.y1, type: s.type})),
          notes: (gd.layout.annotations || []).map((a) => String(a.text)),
          marks: gd.data.filter((t) => t.name === '""" + MARK + """').map((t) => ({
                   x: Array.from(t.x || []), y: Array.from(t.y || []), text: Array.from(t.text || []),
                   type: t.type}))};
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("nf-dash")
    write_nonfinite_run(root / "nf")
    with dash_server(root) as srv:
        yield srv


def _has_mark(id_: str) -> str:
    return f"f => f && f.data.some((t) => t.name === {MARK!r})"


def test_loss_and_grad_norm_mark_nan_steps_and_draw_the_threshold(page, server) -> None:
    page.goto(f"{server.url}/?run=nf")
    loss = wait_figure(page, "ov-loss", _has_mark("ov-loss"))
    got = page.evaluate(LAYOUT_JS, "ov-loss")["marks"][0]
    assert got["x"] == NAN_STEPS and all(t == "loss = NaN" for t in got["text"])
    finite = [v for v in loss["data"][0]["y"] if v is not None]
    assert got["y"] == [pytest.approx(max(finite))] * len(NAN_STEPS)  # at the top edge of the data
    anomaly = next(t for t in loss["data"] if t["name"] == "anomaly")
    assert SKIPPED in anomaly["x"] and all(v is not None and np.isfinite(v) for v in anomaly["y"])

    gnorm = wait_figure(page, "ov-gnorm", _has_mark("ov-gnorm"))
    names = [t["name"] for t in gnorm["data"]]
    assert names[:2] == ["grad norm (before clipping)", "applied (after clipping)"]
    assert max(v for v in gnorm["data"][0]["y"] if v is not None) > CLIP * 1.3  # the true norm, not the clipped one
    lay = page.evaluate(LAYOUT_JS, "ov-gnorm")
    assert [s["y0"] for s in lay["shapes"]] == [pytest.approx(CLIP, rel=1e-5)]
    assert any("clip threshold ≈ 1 (inferred)" in n for n in lay["notes"])
    assert lay["marks"][0]["x"][0] == SKIPPED
    assert not page.errors


def test_gradient_heatmap_marks_the_nan_column(page, server) -> None:
    page.goto(f"{server.url}/gradients?run=nf")
    fig = wait_figure(page, "grad-norm", _has_mark("grad-norm"))
    assert fig["data"][0]["x"] == list(range(LAST + 1))  # the all-NaN step keeps its column
    mark = next(t for t in fig["data"] if t["name"] == MARK)
    z = np.array([[np.nan if v is None else v for v in row] for row in mark["z"]], dtype=float)
    assert (z[:, SKIPPED] == 1).all() and np.isnan(z[:, :SKIPPED]).all()
    assert not page.errors


def test_compare_grad_norm_draws_the_threshold(page, server) -> None:
    page.goto(f"{server.url}/compare?run=nf")
    wait_figure(page, "cmp-grad_norm", _has_mark("cmp-grad_norm"))
    lay = page.evaluate(LAYOUT_JS, "cmp-grad_norm")
    assert [s["y0"] for s in lay["shapes"]] == [pytest.approx(CLIP, rel=1e-5)]
    assert any("clip ≈ 1 (inferred)" in n for n in lay["notes"])


def test_weight_norm_panel_marks_the_nan_step(page, server) -> None:
    page.goto(f"{server.url}/plugins?run=nf")
    fig = wait_figure(page, "plugin-weight_norm", _has_mark("plugin-weight_norm"))
    assert fig["data"][0]["x"] == [0, 10, 20]
    mark = next(t for t in fig["data"] if t["name"] == MARK)
    z = np.array([[np.nan if v is None else v for v in row] for row in mark["z"]], dtype=float)
    assert np.isnan(z[:, :2]).all() and (z[:, 2] == 1).all()
