"""The roll call of a run (`inspector.views.roll_call`): read from real rank directories written by Recorders, with a live rank,
a damaged rank.json and a rank that never started; no numpy, pyarrow or pandas needed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inspector.store.errors import RunError
from inspector.store.heartbeat_format import HEARTBEAT_FILE, Heartbeat
from inspector.views.roll_call import roll_call, roll_call_or_none
from tests.tui.many_ranks import write_many_ranks

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def eight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 8-rank run on 4 nodes, 12 steps: then rank 3 reopened (closed.json gone, a
    heartbeat at step 9 in all_reduce), rank 5's rank.json torn, rank 7's directory removed."""
    path = tmp_path_factory.mktemp("roll") / "job"
    write_many_ranks(path, 8, 12, ranks_per_node=2)
    (path / "rank-00003" / "closed.json").unlink()
    beat = Heartbeat(rank=3, world_size=8, pid=42, host="node-0001", time=NOW - 30.0, started=NOW - 600,
                     heartbeat_s=5.0, hang_after_s=300.0, step=9, phase="all_reduce")
    (path / "rank-00003" / HEARTBEAT_FILE).write_text(json.dumps(beat.to_json()))
    (path / "rank-00005" / "rank.json").write_text('{"host": "node-00')
    shutil.rmtree(path / "rank-00007")
    return path


def test_roll_call_reads_each_ranks_small_files(eight: Path) -> None:
    roll = roll_call(eight)
    assert (roll.name, roll.world_size) == ("many", 8)
    by_rank = {r.rank: r for r in roll.ranks}
    assert sorted(by_rank) == [0, 1, 2, 3, 4, 5, 6]
    for r in (0, 1, 2, 4, 6):
        assert by_rank[r].closed and by_rank[r].last_step == 11 and by_rank[r].host == f"node-{r // 2:04d}"
        assert by_rank[r].phase is None and by_rank[r].beat_time is None
    live = by_rank[3]
    assert (live.closed, live.last_step, live.phase, live.beat_time, live.host) == \
        (False, 9, "all_reduce", NOW - 30.0, "node-0001")
    torn = by_rank[5]
    assert torn.host is None and torn.closed and torn.last_step == 11    # what its other files say is kept
    assert roll.hosts == ["node-0000", "node-0001", "node-0002", "node-0003"]
    assert roll.last_step == 11 and not roll.all_closed


def test_roll_call_of_a_finished_run_is_all_closed(tmp_path: Path) -> None:
    write_many_ranks(tmp_path / "job", 3, 4)
    roll = roll_call(tmp_path / "job")
    assert roll.all_closed and roll.last_step == 3 and [r.rank for r in roll.ranks] == [0, 1, 2]
    assert roll.hosts == [roll.ranks[0].host]      # one machine wrote all three


def test_roll_call_without_run_json_is_a_run_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no such run directory"):
        roll_call(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{torn")
    with pytest.raises(RunError, match="unreadable"):
        roll_call(tmp_path / "bad")
    assert roll_call_or_none(tmp_path / "bad") is None and roll_call_or_none(tmp_path / "nothing") is None


def test_roll_call_and_the_tui_app_load_without_numpy_pyarrow_or_pandas(eight: Path) -> None:
    """The TUI's first frame must not wait for the heavy imports (its budget is 2x a bare Textual app)."""
    code = ("import sys; from inspector.views.roll_call import roll_call; import inspector.tui.app; "
            f"roll_call({str(eight)!r}); "
            "print(sorted(m for m in ('numpy', 'pyarrow', 'pandas', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
