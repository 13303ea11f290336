"""The System page's rank table on a wide job (pure, no browser): the worst node's ranks first, at most
`MAX_ROWS` rows, the rest counted with how many of them are flagged."""
from __future__ import annotations

from pathlib import Path

from inspector.dash_app.pages.system import MAX_ROWS, ranks_table
from inspector.views.live import LiveRun
from tests.tui.many_ranks import write_many_ranks

RANKS = MAX_ROWS + 16


def _cells(tr) -> list[str]:
    return [td.children for td in tr.children]


def test_a_wide_job_lists_the_worst_nodes_first_and_counts_the_rest(tmp_path: Path) -> None:
    write_many_ranks(tmp_path / "run", RANKS, 12, ranks_per_node=8)        # the last rank is 1.5x slower
    out = ranks_table(LiveRun(tmp_path / "run"))
    table, note = out.children
    rows = table.children[1].children
    assert len(rows) == MAX_ROWS
    first = _cells(rows[0])
    assert first[0] == str(RANKS - 1) and first[1] == f"node-{(RANKS - 1) // 8:04d}" and rows[0].className == "straggler"
    assert [_cells(r)[1] for r in rows[:8]] == [f"node-{(RANKS - 1) // 8:04d}"] * 8      # its node, together
    assert note.children.startswith(f"… and {RANKS - MAX_ROWS} more ranks on 2 more nodes") and "none flagged" in note.children
