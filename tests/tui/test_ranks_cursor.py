"""The Ranks screen honours the replay cursor: on the finished 4-rank straggler sample, every column
is recomputed over the window ending at the cursor, checked against pandas over the RunReader frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from textual.widgets import DataTable, Static

import inspector
from inspector.tui.app import InspectorApp
from inspector.tui.widgets.rank_table import RankTable
from tests.tui.conftest import FROZEN_NOW, wait_until

pytestmark = pytest.mark.anyio
SAMPLE = Path(__file__).resolve().parents[2] / "sample_runs" / "straggler-4rank"
SLOW = 2
BACK = 15
WINDOW = 20


def expected_at(cursor: int) -> pd.DataFrame:
    """Per rank, independently of the views: the window's medians, tokens/s, last loss at `cursor`."""
    reader = inspector.open_run(SAMPLE)
    timing = reader.to_pandas("timing")
    timing = timing[timing["name"].isin(["model", "data", "optimizer", "step"])]
    wide = timing.pivot_table(index=["rank", "step"], columns="phase", values="ms", aggfunc="last").reset_index()
    wide = wide[wide["step"] <= cursor]
    steps = np.sort(wide["step"].unique())[-WINDOW:]
    win = wide[wide["step"].isin(steps)].copy()
    win["compute"] = win[["forward", "data", "optimizer"]].fillna(0).sum(axis=1)
    scal = reader.to_pandas("scalar", names=["tokens_per_s", "step_time_s", "loss"])
    scal = scal.pivot_table(index=["rank", "step"], columns="name", values="value", aggfunc="last").reset_index()
    tokens = scal[scal["step"].isin(steps)].assign(tokens=lambda d: d["tokens_per_s"] * d["step_time_s"])
    out = win.groupby("rank").agg(step=("step", "max"), step_ms=("total", "median"), compute_ms=("compute", "median"))
    out["tokens_per_step"] = tokens.groupby("rank")["tokens"].median()
    out["tokens_per_s"] = out["tokens_per_step"] * 1000.0 / out["step_ms"]
    upto = scal[(scal["step"] <= cursor) & scal["loss"].notna()].sort_values("step")
    out["loss"] = upto.groupby("rank")["loss"].last()
    out["history"] = wide.sort_values("step").groupby("rank")["total"].apply(lambda s: s.to_numpy()[-60:])
    return out


def cell(table: DataTable, row: int, label: str) -> str:
    """The plain text of one cell, by column label."""
    col = [str(c.label) for c in table.ordered_columns].index(label)
    return table.get_row_at(row)[col].plain


@pytest.mark.skipif(not (SAMPLE / "run.json").exists(), reason="sample_runs/straggler-4rank not generated")
async def test_ranks_screen_numbers_follow_the_cursor_back() -> None:
    app = InspectorApp(SAMPLE, frozen_now=FROZEN_NOW)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_until(pilot, lambda: app.settled, timeout=20)
        newest = [cell(app.screen.query_one(RankTable), i, "step ms") for i in range(4)]
        await pilot.press(*["left"] * BACK)
        await wait_until(pilot, lambda: app.settled and app.request.cursor is not None, timeout=20)
        cursor = app.request.cursor
        assert cursor is not None and cursor < app.snapshot.last_step
        want = expected_at(cursor)
        table = app.screen.query_one(RankTable)
        assert sorted(table.rank_order()) == [0, 1, 2, 3] and table.rank_order()[0] == SLOW   # by straggler score
        for i, rank in enumerate(table.rank_order()):
            w = want.loc[rank]
            assert cell(table, i, "step") == f"{w['step']:,.0f}"
            assert cell(table, i, "step ms") == f"{w['step_ms']:.1f}"
            assert cell(table, i, "compute ms") == f"{w['compute_ms']:.1f}"
            assert cell(table, i, "tok/s") == f"{w['tokens_per_s']:,.0f}"
            assert cell(table, i, "loss") == f"{w['loss']:.4f}"
            np.testing.assert_allclose(app.snapshot.payload.history[rank], w["history"])
        # tokens/s and step time come from the same steps: their product is the tokens of a step
        np.testing.assert_allclose(want["tokens_per_s"] * want["step_ms"] / 1000, want["tokens_per_step"])
        assert [cell(table, i, "step ms") for i in range(4)] != newest     # the window did move
        assert table.straggler_ranks() == [SLOW]
        msg = str(app.screen.query_one("#message", Static).render())
        assert f"straggler: rank {SLOW} — rank {SLOW}: data " in msg and "data (waits taken out)" in msg  # cause first
        assert f"steps up to {cursor:,}" in str(app.screen.query_one("#ranks-title", Static).render())
