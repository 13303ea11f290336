"""Pilot tests: navigation and content of every screen against what the synthetic run wrote."""
from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
from textual.widgets import DataTable, Sparkline, Static

from inspector.tui.app import InspectorApp
from inspector.tui.screens.help import HelpScreen
from inspector.tui.widgets.heatmap import HeatMap
from inspector.tui.widgets.rank_table import RankTable
from tests.synthetic_run import SyntheticSpec, write_synthetic_run
from tests.tui.conftest import FROZEN_NOW, wait_until
from tests.tui.many_ranks import base_ms, write_many_ranks

pytestmark = pytest.mark.anyio
SIZE = (150, 40)


def rows(table: DataTable) -> list[list[str]]:
    """Every row of a DataTable as plain strings."""
    return [[getattr(c, "plain", str(c)) for c in table.get_row_at(i)] for i in range(table.row_count)]


def column(table: DataTable, label: str) -> int:
    """Index of the column whose header is `label`."""
    return [str(c.label) for c in table.ordered_columns].index(label)


def message(app: InspectorApp) -> str:
    """The one-line message of the current screen ('' when hidden)."""
    widget = app.screen.query_one("#message", Static)
    return str(widget.render()) if widget.display else ""


async def test_ranks_screen_shows_every_rank_and_flags_the_slow_one(synthetic4) -> None:
    path, written = synthetic4
    app = InspectorApp(path, frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.settled)
        table = app.screen.query_one(RankTable)
        got = rows(table)
        order = table.rank_order()                      # by straggler score, grouped by node: the slow rank first
        assert order[0] == 2 and sorted(order) == [0, 1, 2, 3] and got[0][0] == "2 ⚠"
        assert [row[column(table, "node")] for row in got] == [socket.gethostname()[:10]] * 4
        held = [float(row[column(table, "holds up")].removesuffix(" ms")) for row in got]   # ms a step
        # the slow rank's score: the lead of the measure that flagged it, forward+data+optimizer (0.4 of
        # its 90 ms step against the others' 30 ms: 36 − 12 ms), the figure its reason quotes
        assert held == sorted(held, reverse=True) and held[0] == 24 and held[1:] == [0, 0, 0]
        assert table.straggler_ranks() == [2]
        for r, row in zip(order, got):
            assert row[column(table, "loss")] == f"{written.loss[r][-1]:.4f}"
            assert row[column(table, "step")] == "59"
            assert row[column(table, "step ms")] == f"{np.median(written.step_ms[r][-20:]):.1f}"
            assert row[column(table, "status")] == "finished"
        assert "straggler: rank 2" in message(app)
        summary = rows(app.screen.query_one("#rank-summary", DataTable))
        medians = [np.median(written.step_ms[r][-20:]) for r in range(4)]
        assert [s[0] for s in summary] == ["min", "median", "max"]
        assert summary[2][column(table, "step ms")] == f"{max(medians):.1f}"
        assert summary[0][column(table, "step ms")] == f"{min(medians):.1f}"


async def test_ranks_sort_keys(synthetic4) -> None:
    path, written = synthetic4
    app = InspectorApp(path, frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.settled)
        table = app.screen.query_one(RankTable)
        await pilot.press("s", "s")                       # rank -> step -> step ms (descending)
        assert table.rank_order()[0] == 2
        final_loss = {r: written.loss[r][-1] for r in range(4)}
        while app.screen.sort_key != "loss":
            await pilot.press("s")
        assert table.rank_order() == sorted(final_loss, key=final_loss.get, reverse=True)
        await pilot.press("r")
        assert table.rank_order() == sorted(final_loss, key=final_loss.get)


async def test_run_screen_charts_and_anomaly_jump(synthetic4) -> None:
    path, written = synthetic4
    app = InspectorApp(path, frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: app.settled)
        loss = app.screen.query_one("#spark-loss", Sparkline)
        np.testing.assert_allclose(list(loss.data), written.loss[0], rtol=1e-6)
        feed = app.screen.query_one("#anomalies", DataTable)
        assert [r[0] for r in rows(feed)] == ["40"] * 4 and sorted(int(r[1]) for r in rows(feed)) == [0, 1, 2, 3]
        assert "spike" in rows(feed)[0][4]
        shares = str(app.screen.query_one("#shares", Static).render())
        assert "forward 29%" in shares and "backward 49%" in shares
        await pilot.press("enter")
        assert app.request.cursor == 40
        await wait_until(pilot, lambda: app.settled)
        np.testing.assert_allclose(list(loss.data), written.loss[0][:41], rtol=1e-6)
        label = str(app.screen.query_one("#label-loss", Static).render())
        assert f"{written.loss[0][40]:.4g} @ step 40" in label
        await pilot.press("r")                            # next rank
        await wait_until(pilot, lambda: app.settled and app.request.rank == 1)
        np.testing.assert_allclose(list(loss.data), written.loss[1][:41], rtol=1e-6)


async def test_attention_screen_layer_head_step_keys(synthetic4) -> None:
    path, written = synthetic4
    app = InspectorApp(path, frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await wait_until(pilot, lambda: app.settled)
        heat = app.screen.query_one(HeatMap)
        np.testing.assert_array_equal(heat.matrix, written.attention[50][0, 0].astype(np.float32))
        await pilot.press("l", "h")
        await wait_until(pilot, lambda: app.settled)
        np.testing.assert_array_equal(heat.matrix, written.attention[50][1, 1].astype(np.float32))
        title = str(app.screen.query_one("#map-title", Static).render())
        assert "layer 1" in title and "head 1" in title and "step 50" in title and "16 queries × 16 keys" in title
        table = rows(app.screen.query_one("#head-stats", DataTable))
        assert len(table) == 8
        assert [(r[0], r[1]) for r in table if "collapsed" in r[4]] == [("1", "0")]
        await pilot.press("p", "p")                       # step 50 -> 30
        await wait_until(pilot, lambda: app.settled)
        assert app.request.cursor == 30
        np.testing.assert_array_equal(heat.matrix, written.attention[30][1, 1].astype(np.float32))
        await pilot.press("p")                            # step 20: before the collapse
        await wait_until(pilot, lambda: app.settled)
        assert not any("collapsed" in r[4] for r in rows(app.screen.query_one("#head-stats", DataTable)))
        await pilot.press("H", "L")
        await wait_until(pilot, lambda: app.settled)
        np.testing.assert_array_equal(heat.matrix, written.attention[20][0, 0].astype(np.float32))


async def test_experts_screen_bars_follow_the_step(synthetic4) -> None:
    path, written = synthetic4
    app = InspectorApp(path, frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await wait_until(pilot, lambda: app.settled)
        text = str(app.screen.query_one("#experts-bars", Static).render())
        for layer, counts in enumerate(written.expert_counts[55]):
            assert f"layer {layer}" in text
            assert f"max {counts.max():,} · min {counts.min():,} · {counts.sum():,} tokens" in text
            assert f"imbalance {counts.max() / counts.mean():.2f}" in text
        await pilot.press("p")
        await wait_until(pilot, lambda: app.settled)
        assert app.request.cursor == 50
        text = str(app.screen.query_one("#experts-bars", Static).render())
        counts = written.expert_counts[50][1]
        assert f"max {counts.max():,} · min {counts.min():,}" in text


async def test_replay_cursor_keys_and_play(synthetic4) -> None:
    path, _ = synthetic4
    app = InspectorApp(path, frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: app.settled)
        await pilot.press("home", "right", "right")
        assert app.request.cursor == 2
        await pilot.press("right_square_bracket")
        assert app.request.cursor == 59
        await pilot.press("left_square_bracket", "right")
        assert app.request.cursor == 1
        await wait_until(pilot, lambda: app.settled)
        assert "replay step 1 / 59" in str(app.screen.query_one("#runbar").render())
        await pilot.press("end")
        assert app.request.cursor is None
        await pilot.press("space")
        assert app.playing
        await wait_until(pilot, lambda: (app.request.cursor or 0) >= 3)
        await pilot.press("space")
        assert not app.playing
        paused_at = app.request.cursor
        await pilot.pause(0.6)
        assert app.request.cursor == paused_at


async def test_help_screen_and_quit(synthetic4) -> None:
    path, _ = synthetic4
    app = InspectorApp(path, frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "play / pause" in str(app.screen.query_one("#help-text", Static).render())
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")
    assert app.return_code == 0


@pytest.mark.parametrize(("fixture", "keys", "expected"), [
    ("bare_run", "3", "no attention maps recorded in this run"),
    ("bare_run", "4", "no MoE expert load recorded in this run"),
    ("bare_run", "2", "no anomalies recorded in this run"),
    ("corrupt_run", "", "cannot read"),
])
async def test_missing_panels_say_so_in_one_line(request, fixture, keys, expected) -> None:
    app = InspectorApp(request.getfixturevalue(fixture), frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*keys)
        await wait_until(pilot, lambda: expected in message(app))
        assert "\n" not in message(app).strip()


async def test_crashed_run_is_shown_as_crashed(crashed_run) -> None:
    app = InspectorApp(crashed_run, frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.settled)
        assert app.snapshot.status == "crashed"
        assert "crashed" in str(app.screen.query_one("#runbar").render())
        assert "crashed" in rows(app.screen.query_one(RankTable))[0][column(app.screen.query_one(RankTable), "status")]


async def test_waits_for_a_run_then_follows_it_live(tmp_path) -> None:
    path = tmp_path / "live"
    path.mkdir()
    app = InspectorApp(path, interval=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: "waiting for a run" in message(app))
        writer = threading.Thread(target=write_synthetic_run, args=(path, SyntheticSpec(steps=40, sleep=0.03)))
        writer.start()
        try:
            await wait_until(pilot, lambda: app.snapshot.status == "live" and 0 < app.snapshot.last_step < 39)
            first = app.snapshot.last_step
            await wait_until(pilot, lambda: app.snapshot.last_step > first)
        finally:
            writer.join()
        await wait_until(pilot, lambda: app.snapshot.status == "finished" and app.settled)
        table = app.screen.query_one(RankTable)
        assert rows(table)[0][column(table, "step")] == "39"


async def test_256_ranks_fill_the_table_and_flag_the_last(tmp_path) -> None:
    path = tmp_path / "wide"
    write_many_ranks(path, 256, 12)
    app = InspectorApp(path, frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.settled, timeout=20)
        table = app.screen.query_one(RankTable)
        assert sorted(table.rank_order()) == list(range(256)) and table.rank_order()[0] == 255   # worst first
        assert table.straggler_ranks() == [255]
        await pilot.press("s", "s")
        assert table.rank_order()[0] == 255
        summary = rows(app.screen.query_one("#rank-summary", DataTable))
        col = column(table, "step ms")
        assert base_ms(0, 256) <= float(summary[0][col]) <= base_ms(0, 256) + 2      # jitter is uniform(0, 2)
        assert base_ms(255, 256) <= float(summary[2][col]) <= base_ms(255, 256) + 2


async def test_run_screen_lists_data_problems(tmp_path) -> None:
    import warnings

    from tests.store.damaged_runs import record_run

    record_run(tmp_path / "run", steps=5, world_size=3, maps=False)     # ranks 1 and 2 never wrote
    app = InspectorApp(tmp_path / "run", frozen_now=FROZEN_NOW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        await _show_problems(app)


async def _show_problems(app: InspectorApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.settled)
        await pilot.press("2")
        await wait_until(pilot, lambda: app.settled and app.screen.query("#data-problems"))
        widget = app.screen.query_one("#data-problems", Static)
        await wait_until(pilot, lambda: widget.display)
        text = str(widget.render())
        assert "1 data problem" in text and "rank 1, 2 of 3 never wrote" in text
