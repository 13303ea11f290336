"""The hang verdict in the terminal UI: the Ranks screen's banner and the hang view (Pilot + SVG).

Runs are the synthetic hung runs of `tests.views.test_hang_runs`, written for the tests' frozen clock.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from inspector.tui.app import InspectorApp
from inspector.tui.screens.hang import HangScreen
from inspector.tui.screens.ranks import RanksScreen
from tests.tui.conftest import FROZEN_NOW, wait_until
from tests.views.test_hang_runs import CULPRIT_AT, NOW, SEQ, write_hang_run

SIZE = (150, 40)
assert NOW == FROZEN_NOW


@pytest.fixture(scope="module")
def hung(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-rank run per fault shape."""
    root = tmp_path_factory.mktemp("tui-hang")
    return {f: write_hang_run(root / f, f, 4) for f in ("data", "killed", "healthy", "finished")}


def text_of(app: InspectorApp, selector: str) -> str:
    widget = app.screen.query_one(selector, Static)
    return str(widget.render()) if widget.display else ""


def table_rows(table: DataTable) -> list[list[str]]:
    return [[getattr(c, "plain", str(c)) for c in table.get_row_at(i)] for i in range(table.row_count)]


@pytest.mark.anyio
async def test_banner_names_the_culprit_and_h_opens_the_hang_view(hung) -> None:
    app = InspectorApp(hung["data"], frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.settled)
        assert isinstance(app.screen, RanksScreen)
        banner = text_of(app, "#hang-banner")
        assert "HANG" in banner and f"rank 1 never entered all_reduce #{SEQ} that ranks 0,2,3 wait in" in banner
        assert "worker.py:57" in banner and "in data (loader)" in banner
        await pilot.press("h")
        await wait_until(pilot, lambda: isinstance(app.screen, HangScreen) and app.settled)
        rows = table_rows(app.screen.query_one("#hang-table", DataTable))
        assert rows[0][:5] == ["1", "stalled", "worker.py:57", "7", "data"]
        assert [r[0] for r in rows[1:]] == ["0", "2,3"] and all(f"all_reduce #{SEQ}" in r[6] for r in rows[1:])
        frames = text_of(app, "#hang-frames")
        w = CULPRIT_AT["data"]
        assert f"rank 1 main thread" in frames and f"worker.py:57 in {w.function}" in frames
        assert "innermost: distributed_c10d.py:2501" in frames      # a waiting rank's torch frame, kept last
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, RanksScreen))


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["healthy", "finished"])
async def test_no_banner_without_a_hang(hung, fault: str) -> None:
    app = InspectorApp(hung[fault], frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.settled)
        assert text_of(app, "#hang-banner") == ""
        await pilot.press("h")
        await wait_until(pilot, lambda: isinstance(app.screen, HangScreen) and app.settled)
        assert "no hang" in text_of(app, "#hang-headline")


@pytest.mark.anyio
async def test_banner_appears_while_the_app_is_open(tmp_path: Path) -> None:
    """A live run (real clock): healthy heartbeats, then a rank stops reporting while the UI polls."""
    path = write_hang_run(tmp_path / "live", "healthy", 4, now=time.time())
    app = InspectorApp(path, interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.settled)
        assert text_of(app, "#hang-banner") == ""
        write_hang_run(path, "killed", 4, now=time.time())
        await wait_until(pilot, lambda: "rank 1 stopped reporting" in text_of(app, "#hang-banner"), timeout=20)


def test_hang_view_snapshot(snap_compare, hung) -> None:
    async def open_hang(pilot) -> None:
        await wait_until(pilot, lambda: pilot.app.settled)
        await pilot.press("h")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, HangScreen) and pilot.app.settled)
        await pilot.pause()

    assert snap_compare(InspectorApp(hung["data"], frozen_now=FROZEN_NOW), terminal_size=(130, 38),
                        run_before=open_hang)


def test_ranks_banner_snapshot(snap_compare, hung) -> None:
    async def settled(pilot) -> None:
        await wait_until(pilot, lambda: pilot.app.settled)
        await pilot.pause()

    assert snap_compare(InspectorApp(hung["killed"], frozen_now=FROZEN_NOW), terminal_size=(130, 38),
                        run_before=settled)
