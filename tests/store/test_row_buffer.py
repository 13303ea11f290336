"""`RowBuffer`: rows kept on the producer's side reach the store whole, in order, with their own
step and wall time, when the buffer fills, when its first row is old, at `Recorder.flush()` and
at `close()` — read back from the real files."""
from __future__ import annotations

import time
from pathlib import Path

import inspector
from inspector.schema import SCALAR
from inspector.store.recorder import Recorder
from inspector.store.row_buffer import RowBuffer


def _values(run: Path) -> list[tuple[int, str, float]]:
    df = inspector.open_run(run).to_pandas("scalar")
    df = df[~df["name"].str.startswith("inspector/")]
    return list(zip(df["step"].astype(int), df["name"], df["value"].astype(float)))


def test_rows_reach_the_store_at_each_hand_over(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "run", rank=0, world_size=1)
    buf = RowBuffer(rec, SCALAR, ("name", "value"), max_rows=3, max_age_s=3600)
    t0 = time.time()
    buf.add(0, ("a", 1.0))
    buf.add(1, ("a", 2.0))
    assert len(buf) == 2
    buf.add(2, ("b", 3.0))                          # the third row: handed over
    assert len(buf) == 0
    buf.add(7, ("c", 4.0))
    assert rec.flush()                              # a flush takes the kept row too
    assert len(buf) == 0 and _values(tmp_path / "run") == [(0, "a", 1.0), (1, "a", 2.0), (2, "b", 3.0),
                                                           (7, "c", 4.0)]
    buf.add(8, ("d", 5.0))
    rec.close()                                     # and so does closing the recorder
    df = inspector.open_run(tmp_path / "run").to_pandas("scalar")
    assert _values(tmp_path / "run")[-1] == (8, "d", 5.0)
    stamped = df[df["name"] == "d"]["wall_time"].iloc[0]
    assert t0 <= stamped <= time.time()             # each row's own time, not the hand-over's


def test_old_rows_go_without_a_full_buffer_and_close_unregisters(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "run", rank=0, world_size=1)
    buf = RowBuffer(rec, SCALAR, ("name", "value"), max_rows=1000, max_age_s=0.05)
    buf.add(0, ("a", 1.0))
    time.sleep(0.06)
    buf.add(1, ("a", 2.0))                          # the first row is old: both go
    assert len(buf) == 0
    buf.add(2, ("a", 3.0))
    buf.close()
    assert rec.flush() and len(buf) == 0
    buf.add(3, ("late", 9.0))                       # after close the recorder no longer takes its rows
    rec.close()
    assert [v for _, n, v in _values(tmp_path / "run")] == [1.0, 2.0, 3.0]
