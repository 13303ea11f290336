"""The drawn heatmaps' colour ranges are anchored to meaning (issue 13 item 5), read back from what
Plotly really used (gd._fullData zmin/zmax) in Chromium: expert counts from 0 and shares 0 … 1 on
sample_runs/healthy-moe; attention entropy 0 … ln(keys) and weights 0 … 1 on a demo-like run."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect

from inspector.store.reader import RunReader
from tests.dash_app.conftest import ROOT, artifacts_dir, dash_server
from tests.dash_app.helpers import FIG_JS

SEQ = 24
SCALE_JS = """
(id) => {
  const gd = document.querySelector('#' + id + ' .js-plotly-plot');
  if (!gd || !gd._fullData || !gd._fullData.length || gd.layout.meta && gd.layout.meta.empty) return null;
  const t = gd._fullData[0];
  const title = gd.layout.title || {};
  return {zmin: t.zmin, zmax: t.zmax, colorbar: t.colorbar && t.colorbar.title && t.colorbar.title.text,
          hover: t.hovertemplate, title: title.text || '', subtitle: title.subtitle && title.subtitle.text || '',
          customdata: t.customdata ? Array.from(t.customdata, (r) => Array.from(r)) : null};
}
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """healthy-moe (copied from sample_runs) and a 2-step demo recording of 24-token sequences."""
    import torch

    from inspector.demo import train_and_record
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("colour-root")
    shutil.copytree(ROOT / "sample_runs" / "healthy-moe", out / "healthy-moe")
    train_and_record(config="debug", steps=2, out=out / "demo", seq_len=SEQ, batch_size=2, progress=False)
    return out


@pytest.fixture(scope="module")
def server(root: Path):
    """The dashboard over `root`."""
    with dash_server(root) as srv:
        yield srv


def drawn(page, graph_id: str) -> tuple[dict, dict]:
    """(colour range and titles, data) of the heatmap drawn in `graph_id`, once it is drawn."""
    page.wait_for_function(f"id => ({SCALE_JS})(id) !== null", arg=graph_id, timeout=20_000)
    return page.evaluate(SCALE_JS, graph_id), page.evaluate(FIG_JS, graph_id)


def open_run(page, server, path: str, run: str) -> None:
    page.goto(f"{server.url}{path}?run={run}")
    expect(page.locator("#run-header .status")).to_have_text("finished")


def test_expert_counts_from_zero_and_shares_zero_to_one(page, server, root) -> None:
    open_run(page, server, "/experts", "healthy-moe")
    scale, fig = drawn(page, "exp-counts")
    z = np.array(fig["data"][0]["z"], dtype=float)
    with RunReader(root / "healthy-moe") as reader:
        df = reader.to_pandas("expert_load")
    last = df[df["step"] == df["step"].max()].sort_values("layer")
    counts = np.array([list(c) for c in last["counts"]], dtype=float)
    np.testing.assert_array_equal(z, counts)
    assert counts.min() > 50                                           # autoscaled, the bottom was ~95
    assert scale["zmin"] == 0 and scale["zmax"] == counts.max()
    np.testing.assert_allclose(np.array(scale["customdata"], float), counts / counts.mean(1, keepdims=True))
    assert f"tokens {counts.min():,.0f}–{counts.max():,.0f}" in scale["subtitle"]
    share, _ = drawn(page, "exp-share")
    assert (share["zmin"], share["zmax"]) == (0, 1)
    page.screenshot(path=str(artifacts_dir() / "colour-scales-experts.png"), full_page=True)
    assert page.errors == []


def test_attention_entropy_zero_to_ln_keys_and_weights_zero_to_one(page, server, root) -> None:
    open_run(page, server, "/attention", "demo")
    ent, fig = drawn(page, "attn-entropy")
    z = np.array(fig["data"][0]["z"], dtype=float)
    assert np.ptp(z) < 1e-3                                            # nearly uniform heads…
    assert ent["zmin"] == 0 and ent["zmax"] == pytest.approx(math.log(SEQ))   # …on 0 … ln(keys)
    assert f"of max {math.log(SEQ):.3f}" in ent["title"] and f"ln {SEQ} keys" in ent["title"]
    digits = max(3, math.ceil(-math.log10(np.ptp(z))))
    assert f"{z.min():.{digits}f}–{z.max():.{digits}f}" in ent["title"]          # the true range, stated
    big, _ = drawn(page, "attn-big")
    assert (big["zmin"], big["zmax"]) == (0, 1) and "0 … 1" in big["colorbar"]
    grid, _ = drawn(page, "attn-grid")
    assert (grid["zmin"], grid["zmax"]) == (0, 1)
    page.screenshot(path=str(artifacts_dir() / "colour-scales-attention.png"), full_page=True)
    assert page.errors == []
