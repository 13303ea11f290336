"""Each planted fault of the sample runs is visible on the first dashboard screen for its signal, in
Chromium: the ▼ anomaly marker on the loss or grad-norm chart, the flagged cell of the attention entropy or
the expert load, the anomaly on the module's histogram with its NaN/Inf or out-of-range share, the
straggler row of the ranks table, the planted layer first in the loss spike's explain panel. What to look for comes from the run's own `expected_findings`
(what was planted, written by sample_runs/make_samples.py and hf_samples.py), not from the detectors."""
from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import expect

from inspector.views.live import LiveRun
from tests.dash_app.conftest import ROOT, artifacts_dir, dash_server
from tests.dash_app.helpers import wait_figure
from tests.faults.findings import FAULTY, expected_findings

SAMPLES = ROOT / "sample_runs"
PLANTED = [(run, i, e["fault"]) for run in FAULTY for i, e in enumerate(expected_findings(LiveRun(SAMPLES / run)))]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """The dashboard over a copy of the faulty sample runs."""
    root = tmp_path_factory.mktemp("fault-runs")
    for run in FAULTY:
        shutil.copytree(SAMPLES / run, root / run)
    with dash_server(root) as srv:
        yield srv


def _open(page, srv, path: str, run: str) -> None:
    page.goto(f"{srv.url}{path}?run={run}")
    expect(page.locator("#run-header .status")).to_have_text("finished")


def _trace(fig: dict, name: str) -> dict:
    return next(t for t in fig["data"] if t["name"] == name)


def _has_marker(graph: str, kind: str) -> str:
    """JS predicate: the figure has an anomaly trace whose hover names `kind`."""
    return (f"f => f && f.data.some((t) => t.name === 'anomaly' && (t.text || []).some((s) => "
            f"String(s).includes({kind!r})))")


def _marker_steps(fig: dict, kind: str, module: str = "") -> list[int]:
    marks = _trace(fig, "anomaly")
    return [int(x) for x, text in zip(marks["x"], marks["text"]) if kind in text and module in text]


def _select_module(page, graph: str, module: str) -> dict:
    page.locator("#act-module").click()
    page.get_by_role("option", name=module, exact=True).click()
    return wait_figure(page, graph, f"f => f && String(f.title).startsWith({module + ':'!r})")


def _check_overview_marker(page, srv, run: str, e: dict[str, Any]) -> None:
    """Loss spike, exploding gradient: a ▼ at the step on the loss chart; a gradient one also on the
    grad-norm chart, sitting on a pre-clip norm far above the clip threshold the chart draws."""
    _open(page, srv, "/", run)
    loss = wait_figure(page, "ov-loss", _has_marker("ov-loss", e["kind"]))
    steps = _marker_steps(loss, e["kind"], e.get("module", ""))
    assert any(abs(s - e["step"]) <= e.get("tolerance", 0) for s in steps), steps
    if e["kind"] == "exploding_grad":
        gnorm = wait_figure(page, "ov-gnorm", _has_marker("ov-gnorm", e["kind"]))
        assert e["step"] in _marker_steps(gnorm, e["kind"], e["module"])
        pre = _trace(gnorm, "grad norm (before clipping)")
        at = dict(zip(pre["x"], pre["y"]))[e["step"]]
        assert at > 10 * np.median(pre["y"][: e["step"]])
        expect(page.locator("#ov-gnorm")).to_contain_text("clip threshold")


def _check_loss_as_of_call(page, srv, run: str, e: dict[str, Any]) -> None:
    """The loop zeroes its loss tensor after step(): the chart still shows the loss of every step."""
    _open(page, srv, "/", run)
    loss = _trace(wait_figure(page, "ov-loss"), e["scalar"])
    y = np.array(loss["y"], dtype=float)
    assert len(y) >= 20 and (y[np.isfinite(y)] > 0.1).all()


def _check_nonfinite(page, srv, run: str, e: dict[str, Any]) -> None:
    """NaN/Inf from a module: its histogram carries the ▼ at the step and the NaN/Inf share line is
    above 0 there (0 before)."""
    _open(page, srv, "/activations", run)
    wait_figure(page, "act-hist")
    hist = _select_module(page, "act-hist", e["module"])
    hist = wait_figure(page, "act-hist", _has_marker("act-hist", e["kind"]))
    assert e["step"] in _marker_steps(hist, e["kind"])
    share = wait_figure(page, "act-range", "f => f && f.data.some((t) => t.name === 'NaN/Inf')")
    bad = dict(zip(_trace(share, "NaN/Inf")["x"], _trace(share, "NaN/Inf")["y"]))
    assert bad[e["step"]] > 0 and all(v == 0 for s, v in bad.items() if s < e["step"])


def _check_drift(page, srv, run: str, e: dict[str, Any]) -> None:
    """Drift: the ▼ on the module's histogram near the step; the histogram follows the values (100 %
    in range at every finite step), so the values spread over many more bins at the end than in warm-up."""
    _open(page, srv, "/activations", run)
    wait_figure(page, "act-hist")
    _select_module(page, "act-hist", e["module"])
    hist = wait_figure(page, "act-hist", _has_marker("act-hist", e["kind"]))
    assert any(abs(s - e["step"]) <= e["tolerance"] for s in _marker_steps(hist, e["kind"]))
    occupied = np.isfinite(np.array(hist["data"][0]["z"], dtype=float))     # log10 colour: empty bins are NaN
    bins = occupied.sum(axis=0)                                          # occupied bins per step
    assert bins[-1] > 4 * bins[0], bins
    inside = np.array(_trace(wait_figure(page, "act-range"), "in range")["y"], dtype=float)
    assert (inside[np.isfinite(inside) & (inside > 0)] > 0.999).all() and np.nanmedian(inside) > 0.999


def _check_dead(page, srv, run: str, e: dict[str, Any]) -> None:
    """Dead ReLU units: the dead-fraction chart names the module as dead since about the step, and its
    line is near 1 at the end."""
    _open(page, srv, "/activations", run)
    dead = wait_figure(page, "act-dead", f"f => f && String(f.title).includes({e['module']!r})")
    since = int(dead["title"].split(e["module"] + " (since step ")[1].split(")")[0].replace(",", ""))
    assert abs(since - e["step"]) <= e["tolerance"]
    assert _trace(dead, e["module"])["y"][-1] > 0.9


def _check_collapsed(page, srv, run: str, e: dict[str, Any]) -> None:
    """A collapsed head: its row of the entropy heatmap is flagged ⚠ with a ✕ where it began, and its
    entropy there is low on the 0 … ln(keys) scale."""
    _open(page, srv, "/attention", run)
    label = f"⚠ L{e['layer']}·H{e['head']}"
    ent = wait_figure(page, "attn-entropy", f"f => f && f.data.length > 1")
    rows = list(ent["data"][0]["y"])
    assert label in rows and sum(r.startswith("⚠") for r in rows) == 1, rows
    onset = dict(zip(_trace(ent, "collapsed from")["y"], _trace(ent, "collapsed from")["x"]))
    assert abs(onset[label] - e["step"]) <= e["tolerance"]
    all_z = np.array(ent["data"][0]["z"], dtype=float)
    z = all_z[rows.index(label)]
    others = np.delete(all_z, rows.index(label), axis=0)
    # low on the scale to the end: well under the heads' median, and the lowest head at every late sample
    assert np.nanmean(z[-3:]) < 0.4 * np.nanmedian(all_z)
    assert (z[-3:] < np.nanmin(others[:, -3:], axis=0)).all()


def _check_starved(page, srv, run: str, e: dict[str, Any]) -> None:
    """A starved expert: ✕ on its cell of the tokens-per-expert heatmap (0 tokens), ⚠ on its row of
    the layer's share-over-time heatmap."""
    _open(page, srv, "/experts", run)
    layer = int(e["module"].split(".")[1])
    counts = wait_figure(page, "exp-counts", "f => f && f.data.some((t) => t.name === 'starved')")
    starved = _trace(counts, "starved")
    assert list(zip(starved["x"], starved["y"])) == [(e["expert"], f"L{layer}")]
    row = list(counts["data"][0]["y"]).index(f"L{layer}")
    assert np.array(counts["data"][0]["z"], dtype=float)[row, e["expert"]] == 0
    page.locator("#exp-layer").click()
    page.get_by_role("option", name=f"layer {layer}", exact=True).click()
    share = wait_figure(page, "exp-share", f"f => f && String(f.title).startsWith('layer {layer}:')")
    assert [y for y in share["data"][0]["y"] if y.startswith("⚠")] == [f"⚠ E{e['expert']}"]


def _check_straggler(page, srv, run: str, e: dict[str, Any]) -> None:
    """A straggler: its row of the System page's rank table, and only it, is flagged."""
    _open(page, srv, "/system", run)
    rows = page.locator("#sys-ranks tr", has=page.locator("td.dash-cell"))
    flagged = rows.filter(has=page.locator('td[data-dash-column="flag"]', has_text="straggler"))
    expect(flagged).to_have_count(1)
    expect(flagged.locator('td[data-dash-column="rank"]')).to_have_text(str(e["rank"]))
    expect(rows).to_have_count(len(LiveRun(SAMPLES / run).ranks()))    # every rank listed
    # 4 ranks on 2 cores: each rank's wait for a CPU, one line per rank, the recorded ms
    waits = wait_figure(page, "sys-cpu_wait")
    assert sorted(t["name"] for t in waits["data"]) == [f"r{r}" for r in range(len(LiveRun(SAMPLES / run).ranks()))]
    assert max(max(t["y"]) for t in waits["data"]) > 0


def _check_explain(page, srv, run: str, e: dict[str, Any]) -> None:
    """The spike's root cause: clicking the spike's step in the anomaly list fills the explain panel,
    whose headline and first curve name the planted layer; on the chart that curve is the only one
    past the departure bar a step before the spike."""
    _open(page, srv, "/", run)
    page.locator("#ov-anomalies button.step-link", has_text=f"step {e['step']}").first.click()
    expect(page.locator("#ov-explain")).to_contain_text(f"first to move: update/weight ratio of {e['module']}.")
    fig = wait_figure(page, "ov-explain-fig", f"f => f && String(f.title).includes('step {e['step']}')")
    first = fig["data"][0]
    assert first["name"].startswith(f"1. update/weight ratio · {e['module']}.")
    before = {t["name"]: dict(zip(t["x"], t["y"])).get(e["step"] - 1) for t in fig["data"]}
    assert before[first["name"]] >= 6
    assert all(z is None or z < 6 for name, z in before.items() if e["module"] not in name), before


def _checker(e: dict[str, Any]):
    if e["check"] == "anomaly":
        return {"loss_spike": _check_overview_marker, "exploding_grad": _check_overview_marker,
                "nonfinite_activation": _check_nonfinite, "activation_drift": _check_drift,
                "dead_layer": _check_dead}[e["kind"]]
    return {"explain": _check_explain, "collapsed_head": _check_collapsed, "starved_expert": _check_starved, "straggler": _check_straggler,
            "loss_as_of_call": _check_loss_as_of_call}[e["check"]]


@pytest.mark.parametrize(("run", "index", "fault"), PLANTED, ids=[f"{r}-{i}" for r, i, _ in PLANTED])
def test_first_screen_shows_the_fault(page, samples, run: str, index: int, fault: str) -> None:
    e = expected_findings(LiveRun(samples.root / run))[index]
    _checker(e)(page, samples, run, e)
    page.screenshot(path=str(artifacts_dir() / f"fault-{run}-{index}.png"), full_page=True)
    assert page.errors == []
