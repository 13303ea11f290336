"""Every page on a recorded run shows what the run holds (oracle: the synthetic writer and RunReader)."""
from __future__ import annotations

import numpy as np
from playwright.sync_api import expect

from inspector.store.reader import RunReader
from tests.dash_app.conftest import artifacts_dir
from tests.dash_app.helpers import figure, wait_figure, wait_title
from tests.synthetic_run import BINS, EXPERTS, HEADS, LAYERS, PARAMS, SEQ


def open_page(page, server, path, run="a"):
    page.goto(f"{server.url}{path}?run={run}")
    expect(page.locator("#run-header .status")).to_have_text("finished")


def shot(page, name):
    page.screenshot(path=str(artifacts_dir() / f"{name}.png"), full_page=True)


def test_overview(page, live_dash, recorded_root):
    open_page(page, live_dash, "/")
    loss = wait_figure(page, "ov-loss")
    written = recorded_root.written.loss[0]
    line = next(t for t in loss["data"] if t["name"] == "loss")
    assert line["x"] == list(range(len(written)))
    np.testing.assert_allclose(line["y"], written)
    marks = next(t for t in loss["data"] if t["name"] == "anomaly")
    assert marks["x"] == [40, 40]                                 # one spike per rank
    time_fig = wait_figure(page, "ov-time")
    assert [t["name"] for t in time_fig["data"]] == ["forward", "backward", "optimizer", "other"]
    assert all(len(t["y"]) == 60 for t in time_fig["data"])
    total = np.sum([t["y"] for t in time_fig["data"]], axis=0)
    np.testing.assert_allclose(total, recorded_root.written.step_ms[0])
    assert len(wait_figure(page, "ov-lr")["data"][0]["y"]) == 60
    expect(page.locator("#ov-anomalies tbody tr")).to_have_count(2)
    expect(page.locator("#run-header")).to_contain_text("2/2 ranks")
    shot(page, "overview")
    page.locator("#ov-anomalies .step-link").first.click()         # an anomaly links to its step
    expect(page.locator("#step-label")).to_have_text("step 40 / 59")
    assert page.errors == []


def test_attention(page, live_dash, recorded_root):
    open_page(page, live_dash, "/attention")
    grid = wait_title(page, "attn-grid", "step 50")
    with RunReader(live_dash.root / "a") as reader:
        layers = sorted({int(r["layer"]) for r in reader.blob_rows(step=50)})
        heads = reader.attention_map(step=50, layer=0).shape[0]
    assert grid["meta"]["cells"] == len(layers) * heads == LAYERS * HEADS
    cell = grid["meta"]["cell"]
    z = np.array(grid["data"][0]["z"], dtype=float)
    assert z.shape == (LAYERS * cell - 2, HEADS * cell - 2)
    probs = recorded_root.written.attention[50]
    np.testing.assert_allclose(z[cell:cell + SEQ, 2 * cell:2 * cell + SEQ], probs[1, 2], atol=1e-3)   # L1 H2
    big = wait_title(page, "attn-big", "layer 0 · head 0 · step 50")
    np.testing.assert_allclose(np.array(big["data"][0]["z"], float), probs[0, 0], atol=1e-3)
    ent = wait_figure(page, "attn-entropy")
    assert len(ent["data"][0]["y"]) == LAYERS * HEADS and len(ent["data"][0]["x"]) == 6
    assert any("⚠ L1·H0" == y for y in ent["data"][0]["y"])          # the collapsed head is marked
    shot(page, "attention")
    assert page.errors == []


def test_step_control_changes_attention(page, live_dash, recorded_root):
    open_page(page, live_dash, "/attention")
    wait_title(page, "attn-big", "step 50")
    page.locator("#step-m10").click()                               # 59 -> 49: nearest map at 40
    big = wait_title(page, "attn-big", "step 40")
    np.testing.assert_allclose(np.array(big["data"][0]["z"], float), recorded_root.written.attention[40][0, 0],
                               atol=1e-3)
    expect(page.locator("#step-label")).to_have_text("step 49 / 59")
    expect(page.locator("#step-follow input")).not_to_be_checked()
    for _ in range(3):                                              # quick clicks: each one counts
        page.locator("#step-m10").click()
    expect(page.locator("#step-label")).to_have_text("step 19 / 59")
    wait_title(page, "attn-grid", "step 10")
    page.locator("#step-p1").click()
    expect(page.locator("#step-label")).to_have_text("step 20 / 59")
    wait_title(page, "attn-grid", "step 20")
    box = page.locator("#attn-grid .nsewdrag").first.bounding_box()   # click the L1 row, H3 column
    grid = figure(page, "attn-grid")
    page.mouse.click(box["x"] + box["width"] * (3.5 / HEADS), box["y"] + box["height"] * 0.75)
    big = wait_title(page, "attn-big", "layer 1 · head 3 · step 20")
    np.testing.assert_allclose(np.array(big["data"][0]["z"], float), recorded_root.written.attention[20][1, 3],
                               atol=1e-3)
    assert grid["meta"]["layers"] == [0, 1]
    assert page.errors == []


def test_gradients(page, live_dash):
    open_page(page, live_dash, "/gradients")
    norm = wait_figure(page, "grad-norm")
    with RunReader(live_dash.root / "a") as reader:
        gs = reader.to_pandas("grad_stats", ranks=[0])
    assert np.array(norm["data"][0]["z"]).shape == (gs["name"].nunique(), gs["step"].nunique())
    assert norm["data"][0]["y"] == sorted(PARAMS, key=lambda n: (int(n.split(".")[1]), n))
    ratio = wait_figure(page, "grad-ratio")
    assert len(ratio["data"]) == len(PARAMS) and all(len(t["y"]) == 6 for t in ratio["data"])
    detail = wait_figure(page, "grad-detail")
    assert len(detail["data"]) == 4
    shot(page, "gradients")
    assert page.errors == []


def test_activations(page, live_dash):
    open_page(page, live_dash, "/activations")
    hist = wait_figure(page, "act-hist")
    assert np.array(hist["data"][0]["z"]).shape == (BINS, 6)
    dead = wait_figure(page, "act-dead")
    assert len(dead["data"]) == LAYERS
    wait_title(page, "act-step", "step 50")
    shot(page, "activations")
    assert page.errors == []


def test_experts(page, live_dash, recorded_root):
    open_page(page, live_dash, "/experts")
    counts = wait_title(page, "exp-counts", "step 55 · all 2 ranks summed")
    np.testing.assert_array_equal(np.array(counts["data"][0]["z"]), recorded_root.written.expert_totals[55])
    imb = wait_figure(page, "exp-imbalance")
    assert len(imb["data"]) == LAYERS and all(len(t["y"]) == 12 for t in imb["data"])
    share = wait_figure(page, "exp-share")
    assert np.array(share["data"][0]["z"]).shape == (EXPERTS, 12)
    wait_figure(page, "exp-bias")
    shot(page, "experts")
    assert page.errors == []


def test_system(page, live_dash):
    open_page(page, live_dash, "/system")
    ranks = page.locator('#sys-ranks td[data-dash-column="rank"]')
    expect(ranks).to_have_count(2)
    expect(ranks).to_have_text(["1", "0"])                  # the straggler's node first
    flags = page.locator('#sys-ranks td[data-dash-column="flag"]')
    expect(flags).to_have_text(["straggler", ""])
    assert flags.first.evaluate("td => getComputedStyle(td).color") == "rgb(153, 27, 27)"    # drawn red
    assert flags.last.evaluate("td => getComputedStyle(td).color") != "rgb(153, 27, 27)"
    expect(page.locator("#sys-ranks-count")).to_have_text(
        "2 ranks on 1 node, the node holding the step up most first; 1 flagged")
    util = wait_figure(page, "sys-gpu_util")
    assert sorted(t["name"] for t in util["data"]) == ["r0 cuda:0", "r1 cuda:0"]
    assert all(len(t["y"]) == 12 for t in util["data"])
    wait_figure(page, "sys-cpu_percent")
    shot(page, "system")
    assert page.errors == []


def test_compare(page, live_dash, recorded_root):
    open_page(page, live_dash, "/compare")
    loss = wait_figure(page, "cmp-loss", "f => f && f.data.length == 2")
    assert sorted(t["name"] for t in loss["data"]) == ["a", "b"]
    assert sorted(len(t["y"]) for t in loss["data"]) == [40, 60]
    imb = wait_figure(page, "cmp-imbalance")
    assert [t["name"] for t in imb["data"]] == ["a"]                 # run b has no experts
    shot(page, "compare")
    assert page.errors == []


def test_missing_panels_say_why(page, live_dash):
    open_page(page, live_dash, "/experts", run="b")
    fig = wait_figure(page, "exp-counts", "f => f && f.empty")
    assert "no expert load recorded" in fig["empty"]
    shot(page, "experts-none")
    page.goto(f"{live_dash.url}/attention?run=../../etc")
    expect(page.locator("#run-message")).to_contain_text("outside the dashboard's root")
    fig = wait_figure(page, "attn-grid", "f => f && f.empty")
    assert "outside" in fig["empty"]
    assert page.errors == []
