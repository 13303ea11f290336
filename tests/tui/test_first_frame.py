"""The TUI's first frame is the run's roll call (drawn before a record is read), and the scored rank
table replaces it: checked on a real 40-rank run with one rank still open."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Static

from inspector.store.heartbeat_format import HEARTBEAT_FILE, Heartbeat
from inspector.tui.app import InspectorApp
from inspector.tui.screens.ranks import RanksScreen
from inspector.tui.state import RanksData, RollCallData
from inspector.tui.widgets.rank_table import COLUMNS, RankTable
from tests.tui.conftest import FROZEN_NOW, wait_until
from tests.tui.many_ranks import write_many_ranks

AT = {key: i for i, (key, _) in enumerate(COLUMNS)}
"""A rank table cell's index by its column's key."""

pytestmark = pytest.mark.anyio
RANKS, OPEN = 40, 7


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 ranks on 10 nodes, 8 steps, finished but for rank 7 (a heartbeat at step 5, 30 s old)."""
    path = tmp_path_factory.mktemp("first") / "job"
    write_many_ranks(path, RANKS, 8, ranks_per_node=4)
    (path / f"rank-{OPEN:05d}" / "closed.json").unlink()
    beat = Heartbeat(rank=OPEN, world_size=RANKS, pid=7, host="node-0001", time=FROZEN_NOW - 30.0,
                     started=FROZEN_NOW - 600, heartbeat_s=5.0, hang_after_s=300.0, step=5, phase="backward")
    (path / f"rank-{OPEN:05d}" / HEARTBEAT_FILE).write_text(json.dumps(beat.to_json()))
    return path


async def test_roll_call_is_drawn_first_then_the_scored_table(job: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[tuple[str, bool]] = []
    roll_frames: list[dict] = []
    show = InspectorApp._show
    draw_roll_call = RanksScreen._draw_roll_call

    def record_show(self: InspectorApp, snap) -> None:
        shown.append((type(snap.payload).__name__, snap.partial))
        show(self, snap)

    def record_roll_call(self: RanksScreen, payload: RollCallData) -> str:
        message = draw_roll_call(self, payload)
        table = self.query_one(RankTable)
        roll_frames.append({"order": table.rank_order(), "status": [table.get_row_at(i)[AT["status"]].plain for i in range(3)],
                            "unread": [table.get_row_at(1)[AT[k]].plain for k in ("straggler_score", "step_ms", "gpu_util")],
                            "title": str(self.query_one("#ranks-title", Static).render()), "message": message,
                            "settled": self.inspector.settled})
        return message

    monkeypatch.setattr(InspectorApp, "_show", record_show)
    monkeypatch.setattr(RanksScreen, "_draw_roll_call", record_roll_call)
    app = InspectorApp(job, frozen_now=FROZEN_NOW)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_until(pilot, lambda: app.settled and isinstance(app.snapshot.payload, RanksData))
        assert shown[0] == ("RollCallData", True)           # the first snapshot drawn is the roll call
        assert any(name == "RanksPayload" and not partial for name, partial in shown)
        first = roll_frames[0]
        assert not first["settled"]                          # a partial frame never counts as settled
        visible = 40 - 14
        assert first["order"][0] == OPEN                     # the rank without closed files comes first
        assert first["order"][1:] == [r for r in range(RANKS) if r != OPEN][:visible - 1]   # then by node, rank
        assert first["status"] == ["beat 30s", "finished", "finished"]
        assert first["unread"] == ["", "", ""]               # not read yet: blank, never "N/A"
        assert f"{RANKS} ranks on 10 nodes" in first["title"] and f"{visible} listed" in first["title"]
        assert "reading records" in first["message"]
        table = app.screen.query_one(RankTable)
        assert sorted(table.rank_order()) == list(range(RANKS))       # the full table: every rank
        assert table.cursor_row == 0                                   # at the top of the scored order
        assert "reading records" not in str(app.screen.query_one("#message", Static).render())
        assert "reading records" not in app.snapshot.header


async def test_other_screens_start_with_the_header_only(job: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[tuple[str, str, bool]] = []
    show = InspectorApp._show

    def record_show(self: InspectorApp, snap) -> None:
        shown.append((snap.header, type(snap.payload).__name__, snap.partial))
        show(self, snap)

    monkeypatch.setattr(InspectorApp, "_show", record_show)
    app = InspectorApp(job, screen="run", frozen_now=FROZEN_NOW)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_until(pilot, lambda: app.settled)
        header, payload, partial = shown[0]
        assert partial and payload == "NoneType"
        assert header == f"many · open · step 7 · {RANKS}/{RANKS} ranks on 10 nodes · reading records…"
        assert app.snapshot.payload is not None and not app.snapshot.partial


@pytest.mark.filterwarnings("ignore:.*never wrote anything")   # the reader's own word on the missing rank
async def test_roll_call_says_which_ranks_have_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    write_many_ranks(tmp_path / "job", 6, 3, ranks_per_node=2)
    shutil.rmtree(tmp_path / "job" / "rank-00005")
    messages: list[str] = []
    draw_roll_call = RanksScreen._draw_roll_call
    monkeypatch.setattr(RanksScreen, "_draw_roll_call",
                        lambda self, payload: messages.append(draw_roll_call(self, payload)) or messages[-1])
    app = InspectorApp(tmp_path / "job", frozen_now=FROZEN_NOW)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_until(pilot, lambda: app.settled)
        assert messages and messages[0].startswith("1 of 6 ranks have no directory · reading records…")


async def test_a_failing_roll_call_is_skipped_and_the_table_still_comes(job: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import inspector.tui.first_frame as first_frame

    def broken(path: str):
        raise ValueError("an unforeseen file state")

    monkeypatch.setattr(first_frame, "roll_call_or_none", broken)
    app = InspectorApp(job, frozen_now=FROZEN_NOW)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_until(pilot, lambda: app.settled and isinstance(app.snapshot.payload, RanksData))
        assert sorted(app.screen.query_one(RankTable).rank_order()) == list(range(RANKS))
