"""A real 4-rank torchrun (gloo, CPU) run of the engine with one slowed rank: the TUI flags it."""
from __future__ import annotations

import pytest

from inspector.tui.app import InspectorApp
from inspector.tui.widgets.rank_table import RankTable
from inspector.views.live import open_live
from inspector.views.ranks import compute_ms, rank_table
from tests.conftest import inspector_cli
from tests.tui.conftest import FROZEN_NOW, wait_until

SLOW = 3


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory: pytest.TempPathFactory):
    """`inspector demo --ranks 4 --slow-rank 3` on the debug config, a few steps."""
    out = tmp_path_factory.mktemp("torchrun") / "run"
    result = inspector_cli("demo", "--config", "debug", "--steps", "16", "--ranks", "4", "--slow-rank", str(SLOW),
                           "--out", str(out), "--no-progress", "--no-dash", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.mark.multiproc
def test_views_flag_the_slow_rank(torchrun_run) -> None:
    run = open_live(torchrun_run)
    assert run.ranks() == [0, 1, 2, 3] and run.status() == "finished"
    ms = compute_ms(run)
    assert max(ms, key=ms.get) == SLOW
    table = rank_table(run)
    assert table["straggler"].tolist() == [r == SLOW for r in range(4)]


@pytest.mark.multiproc
@pytest.mark.anyio
async def test_tui_flags_the_slow_rank(torchrun_run) -> None:
    app = InspectorApp(torchrun_run, frozen_now=FROZEN_NOW)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_until(pilot, lambda: app.settled)
        table = app.screen.query_one(RankTable)
        assert sorted(table.rank_order()) == [0, 1, 2, 3] and table.rank_order()[0] == SLOW   # by straggler score
        assert table.straggler_ranks() == [SLOW]
        message = str(app.screen.query_one("#message").render())
        assert f"straggler: rank {SLOW}" in message
