"""The System page's rank table on a wide job (pure, no browser): every rank in one table, the worst
node's ranks first, numbers kept as numbers (sorting by value), a page of `PAGE_ROWS`, the flagged count
said above it."""
from __future__ import annotations

from pathlib import Path

from inspector.dash_app.pages.system import PAGE_ROWS, rank_data_table, ranks_table
from inspector.schema import RunMeta
from inspector.store.format import RUN_META_FILE
from inspector.store.run_dir import write_json_atomic
from inspector.views.live import LiveRun
from tests.tui.many_ranks import write_many_ranks

RANKS = PAGE_ROWS + 16


def test_a_wide_job_lists_the_worst_nodes_first_every_rank_in_the_table(tmp_path: Path) -> None:
    write_many_ranks(tmp_path / "run", RANKS, 12, ranks_per_node=8)        # the last rank is 1.5x slower
    rows, note = ranks_table(LiveRun(tmp_path / "run"))
    assert len(rows) == RANKS and sorted(r["rank"] for r in rows) == list(range(RANKS))
    table = rank_data_table()
    assert table.page_size == PAGE_ROWS and table.page_action == "native" and table.sort_action == "native"
    assert {c["id"] for c in table.columns} == set(rows[0])                 # every field has its column
    slow_node = f"node-{(RANKS - 1) // 8:04d}"
    assert rows[0]["rank"] == RANKS - 1 and rows[0]["node"] == slow_node and rows[0]["flag"] == "straggler"
    assert [r["node"] for r in rows[:8]] == [slow_node] * 8                 # its node, together
    assert [r["rank"] for r in rows if r["flag"]] == [RANKS - 1]
    assert isinstance(rows[0]["step_ms"], float) and rows[0]["step"] == 11   # numbers, not text
    scores = [r["straggler_score"] for r in rows[8:]]
    assert all(isinstance(x, float) for x in scores)
    assert note == f"{RANKS} ranks on {RANKS // 8} nodes, the node holding the step up most first; 1 flagged; {PAGE_ROWS} a page"


def test_ranks_of_the_world_that_never_wrote_are_listed_missing(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    write_json_atomic(tmp_path / "run" / RUN_META_FILE, RunMeta(name="young", world_size=2).to_dict())
    rows, note = ranks_table(LiveRun(tmp_path / "run"))
    assert [(r["rank"], r["status"], r["step"]) for r in rows] == [(0, "missing", None), (1, "missing", None)]
    assert note.startswith("2 ranks on 1 node,")
