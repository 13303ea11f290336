"""The hang panel of the System page in Chromium: shown above the rank table while some rank is stuck,
with the headline, the stuck-ranks table and the named ranks' frames; hidden on a healthy run; and it
appears while the page is open when a live job's rank stops reporting.

The runs are `tests.views.test_hang_runs` shapes, rewritten every 0.3 s against the real clock by a
thread (live processes keep rewriting their heartbeats), so nothing goes stale while the test runs.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.dash_app.conftest import artifacts_dir, dash_server
from tests.views.test_hang_runs import CULPRIT_AT, SEQ, write_hang_run


class Rewriter:
    """Rewrites each run's heartbeats as its current fault shape, every `period` seconds."""

    def __init__(self, root: Path, faults: dict[str, str], period: float = 0.3) -> None:
        self.root, self.faults, self.period = root, dict(faults), period
        self._stop = threading.Event()
        for name, fault in self.faults.items():
            write_hang_run(root / name, fault, 4, now=time.time())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            for name, fault in list(self.faults.items()):
                write_hang_run(self.root / name, fault, 4, now=time.time())

    def stop(self) -> None:
        """Stop rewriting."""
        self._stop.set()
        self._thread.join(5)


def _statuses(page) -> dict[int, str]:
    """{rank: status} of the System page's rank table."""
    ranks = page.locator('#sys-ranks td[data-dash-column="rank"]').all_inner_texts()
    return dict(zip(map(int, ranks), page.locator('#sys-ranks td[data-dash-column="status"]').all_inner_texts()))


@pytest.fixture(scope="module")
def hang_dash(tmp_path_factory):
    """The dashboard over live runs: "data" (rank 1 stuck in its loader), "healthy" and "turns"
    (healthy until a test kills its rank 1)."""
    root = tmp_path_factory.mktemp("hang-runs")
    rewriter = Rewriter(root, {"data": "data", "healthy": "healthy", "turns": "healthy"})
    try:
        with dash_server(root) as srv:
            srv.rewriter = rewriter
            yield srv
    finally:
        rewriter.stop()


def test_hang_panel_names_the_stuck_rank_and_its_frame(page, hang_dash) -> None:
    page.goto(f"{hang_dash.url}/system?run=data")
    headline = page.locator("#hang-headline")
    expect(headline).to_contain_text(f"rank 1 never entered all_reduce #{SEQ} that ranks 0,2,3 wait in", timeout=15_000)
    expect(headline).to_contain_text("in data (loader)")
    expect(headline).to_contain_text("worker.py:57")
    panel = page.locator("#sys-hang")
    expect(panel).to_be_visible()
    # The panel sits above the rank table.
    assert panel.bounding_box()["y"] < page.locator("#sys-ranks").bounding_box()["y"]
    first = page.locator(".hang-table tbody tr").first.locator("td")
    expect(first.nth(0)).to_have_text("1")
    expect(first.nth(1)).to_have_text("stalled")
    expect(first.nth(2)).to_have_text("worker.py:57")
    expect(first.nth(4)).to_have_text("data")
    w = CULPRIT_AT["data"]
    expect(page.locator('pre.hang-frames[data-rank="1"]')).to_contain_text(f"worker.py:57 in {w.function}")
    expect(page.locator('pre.hang-frames[data-rank="0"]')).to_contain_text("innermost: distributed_c10d.py:2501")
    expect(page.locator('#sys-ranks td[data-dash-column="status"]')).to_have_count(4)    # the rank table agrees
    assert _statuses(page) == {0: "waiting", 1: "stalled", 2: "waiting", 3: "waiting"}
    page.screenshot(path=str(artifacts_dir() / "system-hang.png"), full_page=True)
    assert page.errors == []


def test_no_hang_panel_on_a_healthy_run(page, hang_dash) -> None:
    page.goto(f"{hang_dash.url}/system?run=healthy")
    expect(page.locator("#sys-ranks table")).to_be_visible(timeout=15_000)
    page.wait_for_timeout(1500)                # a few live ticks
    expect(page.locator("#sys-hang")).to_be_hidden()
    assert page.errors == []


def test_hang_panel_appears_while_the_page_is_open(page, hang_dash) -> None:
    page.goto(f"{hang_dash.url}/system?run=turns")
    expect(page.locator("#sys-ranks table")).to_be_visible(timeout=15_000)
    expect(page.locator("#sys-hang")).to_be_hidden()
    status = page.locator('#sys-ranks td[data-dash-column="status"]')
    expect(status).to_have_text(["live"] * 4)
    ranks = page.locator('#sys-ranks td[data-dash-column="rank"]')
    sort = page.locator('#sys-ranks th[data-dash-column="rank"] .column-header--sort')
    sort.click()
    sort.click()                                                  # descending
    expect(ranks).to_have_text(["3", "2", "1", "0"])
    hang_dash.rewriter.faults["turns"] = "killed"
    expect(page.locator("#hang-headline")).to_contain_text("rank 1 stopped reporting (killed or crashed?)",
                                                           timeout=20_000)
    expect(page.locator("#sys-hang")).to_be_visible()
    # no record was written: the rank table follows the heartbeats
    expect(status.filter(has_text="silent")).to_have_count(1, timeout=10_000)
    assert _statuses(page) == {0: "waiting", 1: "silent", 2: "waiting", 3: "waiting"}
    expect(ranks).to_have_text(["3", "2", "1", "0"])              # new rows, the user's sorting kept
    assert page.errors == []
