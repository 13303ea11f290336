"""Crashes, damage and OS errors, with real processes and real files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from inspector.store import RunWarning, open_run
from inspector.store.recorder import Recorder

WRITER = str(Path(__file__).with_name("writer_script.py"))


def _start_writer(run: Path, steps: int, rate: float, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WRITER, str(run), str(steps), str(rate), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"writer never printed {prefix!r}; stderr: {proc.stderr.read()}")


@pytest.mark.multiproc
def test_kill_9_keeps_every_flushed_record_and_reads_as_crashed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _start_writer(run, 100000, 200, "--maps")
    flushed = -1
    while flushed < 60:
        flushed = int(_wait_for_line(proc, "flushed").split()[1])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    seg = run / "rank-00000" / "seg-000000.dsi"
    # Simulate the crash landing mid-write: a torn frame at the end (header + half a payload).
    data = seg.read_bytes()
    with seg.open("ab") as f:
        f.write(data[:200])  # starts with a valid header whose payload is cut short
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = open_run(run, stale_after=0.5)
        time.sleep(0.6)
        reader.refresh()
        status = reader.status()
        reader.refresh()  # a second refresh must not warn again
    torn = [w for w in caught if issubclass(w.category, RunWarning) and "torn" in str(w.message)]
    assert len(torn) == 1, [str(w.message) for w in caught]
    assert status == "crashed"
    steps = reader.to_pandas("scalar", names=["step_echo"])["step"].tolist()
    assert steps[: flushed + 1] == list(range(flushed + 1))  # every flushed step is there, in order
    assert reader.attention_map(step=60, layer=0).shape == (2, 8, 8)


def test_garbage_in_a_segment_is_skipped_and_reported(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with Recorder(run) as rec:
        for s in range(10):
            rec.scalar("x", float(s), step=s)
            assert rec.flush()
    seg = run / "rank-00000" / "seg-000000.dsi"
    data = bytearray(seg.read_bytes())
    headers = [i for i in range(len(data)) if data[i:i + 4] == b"DSIF"]
    mid = headers[len(headers) // 2]
    data[mid - 20:mid + 20] = b"\x00" * 40  # across the end of one frame and the next header
    seg.write_bytes(bytes(data))
    with pytest.warns(RunWarning) as caught:
        reader = open_run(run)
        got = reader.to_pandas("scalar", names=["x"])["step"].tolist()
    messages = " ".join(str(w.message) for w in caught)
    assert "skipped" in messages and "unreadable bytes" in messages
    assert 7 <= len(got) < 10 and got == sorted(got)
    assert got[0] == 0 and got[-1] == 9  # frames after the damage are found again
    assert any("skipped" in p for p in reader.problems)


def test_corrupt_payload_fails_its_checksum(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with Recorder(run) as rec:
        for s in range(3):
            rec.scalar("x", float(s), step=s)
            assert rec.flush()
    seg = run / "rank-00000" / "seg-000000.dsi"
    data = bytearray(seg.read_bytes())
    data[60] ^= 0xFF  # inside the first frame's payload
    seg.write_bytes(bytes(data))
    with pytest.warns(RunWarning, match="checksum"):
        steps = open_run(run).to_pandas("scalar", names=["x"])["step"].tolist()
    assert steps == [1, 2]


@pytest.mark.multiproc
def test_reader_in_another_process_sees_steps_grow_once_each(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _start_writer(run, 150, 100, "--flush-every", "0")
    reader_code = f"""
import sys, time, json
from pathlib import Path
from inspector.store import open_run
run = Path({str(run)!r})
while not (run / "run.json").exists():
    time.sleep(0.01)
r = open_run(run)
cur = r.cursor("scalar")
seen, polls = [], 0
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    polls += 1
    seen += r.read_new(cur, names=["step_echo"]).column("step").to_pylist()
    if r.status() == "finished":
        seen += r.read_new(cur, names=["step_echo"]).column("step").to_pylist()
        break
    time.sleep(0.02)
print(json.dumps({{"seen": seen, "polls": polls}}))
"""
    out = subprocess.run([sys.executable, "-c", reader_code], capture_output=True, text=True, timeout=90)
    proc.wait(timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["seen"] == list(range(150))
    assert result["polls"] > 10  # it really read while the writer wrote


@pytest.mark.multiproc
def test_disk_full_stops_recording_without_raising(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _start_writer(run, 400, 200, "--fsize-limit", "20000", "--flush-every", "0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err  # the "training loop" finished normally
    assert "closed dropped=" in out
    dropped = int(out.split("closed dropped=")[1].split()[0])
    assert dropped > 0 and "failed=True" in out
    assert err.count("recording to") == 1 and "File too large" in err  # warned once
    steps = open_run(run).to_pandas("scalar", names=["step_echo"])["step"].tolist()
    assert steps and steps == list(range(len(steps)))  # what was written before is intact


@pytest.mark.multiproc
def test_run_directory_removed_while_recording(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _start_writer(run, 200, 0, "--rm-dir-at", "50", "--segment-bytes", "4096", "--flush-every", "10")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "failed=True" in out and err.count("recording to") == 1


def _write_run_json(run: Path, **data: object) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "run.json").write_text(json.dumps(data))


def test_bad_run_directories_give_one_line_errors(tmp_path: Path) -> None:
    from tests.conftest import inspector_cli

    _write_run_json(tmp_path / "newer", name="n", format_version=99)
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "run.json").write_text('{"name": "t", "format_ver')
    (tmp_path / "norunjson" / "rank-00000").mkdir(parents=True)
    cases = {
        "missing": "no such run directory",
        "newer": "run format 99",
        "truncated": "run.json: unreadable",
        "norunjson": "run.json is missing",
    }
    for name, expected in cases.items():
        for cmd in (["info"], ["export", "--out", str(tmp_path / "x")]):
            res = inspector_cli(*cmd[:1], str(tmp_path / name), *cmd[1:])
            assert res.returncode == 2, (name, res.stdout, res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and expected in lines[0], (name, res.stderr)
            assert "Traceback" not in res.stderr


def test_recorder_never_raises_on_a_closed_recorder(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "run")
    rec.close()
    assert rec.scalar("x", 1.0) is False and rec.dropped == 1
    assert rec.attention_map("a", np.zeros((1, 2, 2)), layer=0) is False


def test_resuming_after_a_torn_tail_keeps_old_and_new_records(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with Recorder(run) as rec:
        for s in range(5):
            rec.scalar("x", float(s), step=s)
    seg = run / "rank-00000" / "seg-000000.dsi"
    data = seg.read_bytes()
    seg.write_bytes(data + data[:60])  # a crash left a torn frame at the end
    with Recorder(run) as rec:  # the job restarts (e.g. --resume) into the same run directory
        for s in range(5, 10):
            rec.scalar("x", float(s), step=s)
    with pytest.warns(RunWarning, match="torn"):
        steps = open_run(run).to_pandas("scalar", names=["x"])["step"].tolist()
    assert steps == list(range(10))


@pytest.mark.multiproc
def test_kill_9_rounds_lose_no_acknowledged_record(tmp_path: Path) -> None:
    from tests.store.kill_loop import kill_loop

    report = kill_loop(tmp_path / "run", rounds=6, seed=1)
    assert report.rounds == 6 and report.acked >= 6
    assert report.lost == 0 and report.checksum_failures == 0, report.problems
