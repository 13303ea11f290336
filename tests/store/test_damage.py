"""Damaged, truncated and crafted run directories: every loss is reported, nothing crashes or hangs.

Each test damages a copy of a real recorded run the way a crash, a careless copy or an attacker
would, and checks what the reader returns and reports.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from inspector.store import open_run
from inspector.store.format import segment_name
from tests.store.damaged_runs import (
    STEPS,
    copy_run,
    frames_of,
    lying_histogram_frame,
    record_run,
    scalar_frame,
)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("healthy") / "run"
    record_run(run)
    segs = sorted((run / "rank-00000").glob("seg-*.dsi"))
    assert len(segs) >= 4, "the damage tests need several segments"
    return run


def _open(run: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_run(run)


def _loss_steps(run: Path) -> list[int]:
    return sorted(set(_open(run).to_pandas("scalar", names=["loss"])["step"]))


def test_healthy_copy_is_finished_without_problems(healthy: Path, tmp_path: Path) -> None:
    r = _open(copy_run(healthy, tmp_path / "c"))
    assert r.status() == "finished" and r.problems == []
    assert _loss_steps(r.path) == list(range(STEPS))


def test_segment_truncated_at_a_frame_boundary_is_reported(healthy: Path, tmp_path: Path) -> None:
    run = copy_run(healthy, tmp_path / "c")
    seg = run / "rank-00000" / segment_name(1)
    frames = frames_of(seg)
    os.truncate(seg, frames[len(frames) // 2][0])        # half the records of this segment gone
    r = _open(run)
    assert r.status() == "damaged" and r.rank_status(0) == "damaged"
    assert any("cut short" in p and segment_name(1) in p for p in r.problems), r.problems


def test_missing_middle_segment_and_emptied_last_segment_are_reported(healthy: Path, tmp_path: Path) -> None:
    run = copy_run(healthy, tmp_path / "c")
    rank = run / "rank-00000"
    (rank / segment_name(1)).unlink()
    last = sorted(rank.glob("seg-*.dsi"))[-1]
    os.truncate(last, 0)
    r = _open(run)
    assert r.status() == "damaged"
    text = "\n".join(r.problems)
    assert f"{segment_name(1)} missing" in text and last.name in text


def test_rank_directory_replaced_by_a_file_is_reported(healthy: Path, tmp_path: Path) -> None:
    run = copy_run(healthy, tmp_path / "c")
    import shutil
    shutil.rmtree(run / "rank-00000")
    (run / "rank-00000").write_text("not a directory")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = open_run(run, stale_after=0.0)
    assert r.status() != "finished"
    assert any("rank-00000" in p and "not a directory" in p for p in r.problems)
    assert any("never wrote" in p for p in r.problems)


def test_rank_that_never_created_its_directory_is_named(tmp_path: Path) -> None:
    run = tmp_path / "run"
    record_run(run, steps=3, world_size=3, maps=False)      # ranks 1 and 2 never start
    r = _open(run)
    assert r.status() == "damaged"                         # not "live" forever
    assert r.missing_ranks() == [1, 2] and r.rank_status(2) == "missing"
    assert any("rank 1, 2 of 3 never wrote" in p for p in r.problems), r.problems


def test_resync_after_deleted_bytes_keeps_the_next_intact_frame(healthy: Path, tmp_path: Path) -> None:
    run = copy_run(healthy, tmp_path / "c")
    seg = run / "rank-00000" / segment_name(0)
    data = seg.read_bytes()
    (off0, len0), (off1, _len1) = frames_of(seg)[:2]
    seg.write_bytes(data[:off0 + 50] + data[off0 + 60:])    # 10 bytes gone inside the first frame
    r = _open(run)
    healthy_frames = len(frames_of(healthy / "rank-00000" / segment_name(0)))
    found = [f for f in r._ranks[0].frames if f.segment == 0]
    assert len(found) == healthy_frames - 1                # only the damaged frame is lost
    assert any("unreadable bytes" in p for p in r.problems) and r.status() == "damaged"


def test_lying_arrow_payload_with_valid_checksums_is_skipped_in_every_process(healthy: Path, tmp_path: Path) -> None:
    run = copy_run(healthy, tmp_path / "c")
    seg = run / "rank-00000" / segment_name(0)
    with seg.open("ab") as f:
        f.write(lying_histogram_frame(3))
    # In a child process: before the fix, reading this frame killed the reader with SIGSEGV.
    code = ("import sys, warnings; warnings.simplefilter('ignore'); from inspector.store import open_run; "
            "r = open_run(sys.argv[1]); t = r.read_table('histogram'); t.to_pylist(); r.to_pandas('histogram'); "
            "print(t.num_rows, len(r.problems), r.status())")
    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows, problems, status = proc.stdout.split()
    assert int(rows) == STEPS and int(problems) >= 1 and status == "damaged"
    cli = subprocess.run([sys.executable, "-m", "inspector.cli", "summary", str(run)], capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 0 and "skipped" in cli.stderr, cli.stderr


def test_frame_with_another_schema_or_newer_version_does_not_hide_the_kind(healthy: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    run = copy_run(healthy, tmp_path / "c")
    seg = run / "rank-00000" / segment_name(0)
    foreign = pa.schema([("step", pa.int64()), ("other", pa.string())])
    with seg.open("ab") as f:
        f.write(scalar_frame(5, schema=foreign) + scalar_frame(6, version=99))
    r = _open(run)
    assert _loss_steps(run) == list(range(STEPS))          # the kind stays readable
    assert "injected" not in set(r.to_pandas("scalar")["name"])
    text = "\n".join(r.problems)
    assert "columns other than its kind's" in text and "newer inspector" in text


def test_duplicated_frames_are_read_once_and_reported(healthy: Path, tmp_path: Path) -> None:
    run = copy_run(healthy, tmp_path / "c")
    seg = run / "rank-00000" / segment_name(0)
    data = seg.read_bytes()
    off, n = frames_of(seg)[0]
    seg.write_bytes(data + data[off:off + n])
    r = _open(run)
    df = r.to_pandas("scalar")
    assert not df.duplicated(["step", "name", "rank"]).any()
    assert any("byte for byte" in p for p in r.problems)


def test_stray_files_are_skipped_and_never_block(healthy: Path, tmp_path: Path) -> None:
    run = copy_run(healthy, tmp_path / "c")
    rank = run / "rank-00000"
    (rank / "seg-000000 (copy).dsi").write_bytes((rank / segment_name(0)).read_bytes())
    os.mkfifo(rank / "seg-000099.dsi")                     # opening a pipe for reading blocks forever
    (rank / "blob-000000.bin").unlink()
    (rank / "blob-000000.bin").mkdir()
    os.symlink("rank-00007", run / "rank-00007")          # a symlink loop
    code = ("import sys, warnings; warnings.simplefilter('ignore'); from inspector.store import open_run; "
            "r = open_run(sys.argv[1]); r.to_pandas('scalar'); print(r.status()); print('\\n'.join(r.problems))")
    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "seg-000000 (copy).dsi" in out and "named pipe" in out and "rank-00007: a symlink" in out
    r = _open(run)
    assert r.blob_steps() == []                            # their blob file is now a directory
    assert any("past the end of blob-000000.bin" in p for p in r.problems) and r.status() == "damaged"
    with pytest.raises(KeyError):
        r.attention_map(step=10, layer=0)


def test_blob_index_rows_that_lie_are_refused_before_allocating(healthy: Path, tmp_path: Path) -> None:
    from inspector.store.blob_check import BadBlobRowError, check_blob_row
    row = {"codec": "none", "dtype": "<f2", "shape": [2, 4, 4], "blob_file": 0, "offset": 0, "length": 64,
           "crc32": 1}
    assert check_blob_row(row).nbytes == 64
    for bad in ({"codec": "gzip"}, {"dtype": "O"}, {"dtype": "V8"}, {"shape": [-1, 4]}, {"shape": [1 << 40, 1 << 40]},
                {"shape": [1] * 9}, {"offset": -5}, {"length": 65}, {"codec": "lz4", "shape": [1 << 14, 1 << 14]}):
        with pytest.raises(BadBlobRowError):
            check_blob_row({**row, **bad})


def test_resumed_writer_session_is_told_apart(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rec = record_run(run, steps=20, close=False, maps=False)
    rec._writer.state.close()                               # the process "dies" without closing
    rec._closed = True
    record_run(run, steps=25, maps=False)                    # a resume that records steps 0..24 again
    r = _open(run)
    df = r.to_pandas("scalar", names=["loss"])
    assert sorted(df["session"].unique()) == [0, 1]
    assert sorted(df.loc[df["session"] == 1, "step"]) == list(range(25))
    assert any("session 1 (a resume)" in p for p in r.problems), r.problems
    info = r.rank_info(0)
    assert [s["session"] for s in info["sessions"]] == [0, 1]


def test_second_writer_of_one_rank_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from inspector.store.recorder import Recorder
    run = tmp_path / "run"
    first = Recorder(run)
    second = Recorder(run)                                  # same rank 0: must not interleave frames
    for s in range(5):
        first.step = second.step = s
        first.scalars({"loss": 1.0})
        second.scalars({"loss": 2.0})
    second.close()
    first.close()
    assert "being written by another process" in caplog.text
    df = _open(run).to_pandas("scalar", names=["loss"])
    assert list(df["value"]) == [1.0] * 5


def test_disk_full_reads_failed_not_crashed(tmp_path: Path) -> None:
    from tests.store.test_faults import _start_writer
    run = tmp_path / "run"
    proc = _start_writer(run, 400, 200, "--fsize-limit", "20000", "--flush-every", "0")
    proc.communicate(timeout=60)
    r = _open(run)
    assert r.status() == "failed" and r.rank_status(0) == "failed"
    assert "File too large" in (r.failure(0) or "")


def test_crashed_run_truncated_below_its_checkpoint_is_reported(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rec = record_run(run, steps=30, close=False, maps=False)     # flushed: checkpoint is up to date
    rec._writer.state.close()
    rec._closed = True
    seg = sorted((run / "rank-00000").glob("seg-*.dsi"))[-1]
    os.truncate(seg, frames_of(seg)[-1][0])                    # the last record gone
    r = open_run(run, stale_after=0.0)
    assert r.status() == "crashed"
    assert any(seg.name in p and "bytes written" in p for p in r.problems), r.problems


def test_unwatched_read_only_filesystem_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from inspector.store.recorder import Recorder
    rec = Recorder("/proc/inspector-cannot-write-here/run")
    rec.scalars({"loss": 1.0})
    rec.flush()
    rec.close()
    assert caplog.text.count("recording to") == 1 and rec.dropped == 1


def test_closed_json_tells_sizes_and_writer_json_the_state(healthy: Path) -> None:
    rank = healthy / "rank-00000"
    closed = json.loads((rank / "closed.json").read_text())
    sizes = {p.name: p.stat().st_size for p in rank.glob("seg-*.dsi")}
    assert closed["segments"] == sizes and closed["last_step"] == STEPS - 1
    assert json.loads((rank / "writer.json").read_text())["state"] == "closed"
    assert np.isfinite(closed["closed_at"])


def test_damaged_blob_bytes_raise_one_line_and_are_listed_as_problems(healthy: Path, tmp_path: Path) -> None:
    from inspector.store.errors import CorruptRunError
    run = copy_run(healthy, tmp_path / "c")
    blob = run / "rank-00000" / "blob-000000.bin"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    r = _open(run)
    failures = 0
    for step in r.blob_steps():
        try:
            r.attention_map(step=step, layer=0)
        except CorruptRunError as exc:
            failures += 1
            assert "\n" not in str(exc) and "checksum" in str(exc)
    assert failures == 1 and r.status() == "damaged"
    assert any("checksum" in p for p in r.problems)


def test_frame_whose_steps_lie_about_its_header_is_skipped(healthy: Path, tmp_path: Path) -> None:
    from inspector.schema import SCALAR
    from inspector.store.format import HEADER_SIZE, encode_frame
    run = copy_run(healthy, tmp_path / "c")
    frame = scalar_frame(7)                                    # a real scalar record at step 7 ...
    lying = encode_frame(SCALAR.id, SCALAR.version, frame[HEADER_SIZE:], 5, 5)   # ... whose header says 5
    with (run / "rank-00000" / segment_name(0)).open("ab") as f:
        f.write(lying)
    r = _open(run)
    for steps in (None, (0, 10), 7):
        assert "injected" not in set(r.to_pandas("scalar", steps=steps)["name"])
    assert any("outside the 5..5 its header declares" in p for p in r.problems) and r.status() == "damaged"
