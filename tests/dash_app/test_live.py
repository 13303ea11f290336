"""Live runs: a writer in another process appends steps and the open page shows them; a run that appears
later, an empty root and a crashed run each show a message instead of a stack trace."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
from playwright.sync_api import expect

from tests.dash_app.conftest import ROOT, artifacts_dir, dash_server
from tests.dash_app.helpers import wait_figure
from tests.synthetic_run import SyntheticSpec, write_synthetic_run


def test_writer_subprocess_appends_and_page_follows(page, tmp_path):
    run = tmp_path / "live"
    writer = subprocess.Popen([sys.executable, "-m", "tests.synthetic_run", str(run), "--steps", "40",
                               "--sleep", "0.15"], cwd=ROOT)
    try:
        deadline = time.time() + 20
        while not (run / "run.json").exists():
            assert time.time() < deadline and writer.poll() is None, "writer did not start"
            time.sleep(0.05)
        with dash_server(run) as server:
            page.goto(server.url + "/")
            expect(page.locator("#run-header .status")).to_have_text("live", timeout=10_000)
            first = wait_figure(page, "ov-loss")
            n0 = len(first["data"][0]["x"])
            assert n0 < 40
            t0 = time.time()
            grown = wait_figure(page, "ov-loss", f"f => f && f.data[0].x.length >= {n0 + 5}", timeout=5_000)
            assert time.time() - t0 < 5
            assert grown["data"][0]["x"] == list(range(len(grown["data"][0]["x"])))
            label = page.locator("#step-label").inner_text()
            assert label.startswith("step ") and int(label.split()[1].replace(",", "")) >= n0   # follows latest
            page.screenshot(path=str(artifacts_dir() / "overview-live.png"), full_page=True)
            writer.wait(30)
            done = wait_figure(page, "ov-loss", "f => f && f.data[0].x.length == 40", timeout=8_000)
            assert len(done["data"][0]["y"]) == 40
            expect(page.locator("#run-header .status")).to_have_text("finished", timeout=8_000)
        assert page.errors == []
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(5)


def test_run_appearing_later_and_empty_root(page, tmp_path):
    with dash_server(tmp_path) as server:
        page.goto(server.url + "/attention")
        expect(page.locator("#run-message")).to_contain_text("no runs under")
        fig = wait_figure(page, "attn-grid", "f => f && f.empty")
        assert "no runs under" in fig["empty"]
        page.screenshot(path=str(artifacts_dir() / "empty-root.png"), full_page=True)
        written = write_synthetic_run(tmp_path / "late", SyntheticSpec(steps=20))
        expect(page.locator("#run-header .status")).to_have_text("finished", timeout=8_000)
        expect(page.locator("#run-message")).to_be_empty()
        page.goto(server.url + "/?run=late")
        loss = wait_figure(page, "ov-loss")
        np.testing.assert_allclose(loss["data"][0]["y"], written.loss[0])
        assert page.errors == []


def test_crashed_run_and_run_without_attention(page, tmp_path):
    write_synthetic_run(tmp_path / "dead", SyntheticSpec(steps=20, close=False, with_attention=False,
                                                         with_experts=False))
    with dash_server(tmp_path) as server:
        page.goto(server.url + "/attention?run=dead")
        expect(page.locator("#run-header .status")).to_have_text("crashed")
        expect(page.locator("#run-message")).to_contain_text("stopped without closing")
        fig = wait_figure(page, "attn-grid", "f => f && f.empty")
        assert "no attention maps recorded" in fig["empty"]
        assert "no attention statistics" in wait_figure(page, "attn-entropy", "f => f && f.empty")["empty"]
        page.screenshot(path=str(artifacts_dir() / "attention-none-crashed.png"), full_page=True)
        page.goto(server.url + "/?run=missing")
        expect(page.locator("#run-message")).to_contain_text("does not exist")
        assert page.errors == []
