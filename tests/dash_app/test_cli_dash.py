"""`inspector dash` / `replay` as real processes, and the dashboard's import rule (no torch)."""
from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.synthetic_run import SyntheticSpec, write_synthetic_run

EXE = Path(sys.executable).with_name("inspector")


def test_dashboard_never_imports_torch(tmp_path):
    write_synthetic_run(tmp_path / "r", SyntheticSpec(steps=10))
    code = ("import sys; from inspector.dash_app import create_app; app = create_app(sys.argv[1]); "
            "c = app.server.test_client(); assert c.get('/').status_code == 200; "
            "bad = [m for m in ('torch', 'inspector_engine', 'inspector.probes', 'inspector.sysmon', 'inspector.store.writer') "
            "if m in sys.modules]; print('BAD', bad)")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "BAD []" in res.stdout


def test_replay_serves_and_prints_url(tmp_path):
    write_synthetic_run(tmp_path / "r", SyntheticSpec(steps=10))
    proc = subprocess.Popen([str(EXE), "replay", str(tmp_path / "r"), "--port", "0", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert m, line
        deadline = time.time() + 10
        while True:
            try:
                with urllib.request.urlopen(m.group(1) + "_dash-layout", timeout=5) as resp:
                    assert resp.status == 200 and b"step-slider" in resp.read()
                break
            except OSError:
                assert time.time() < deadline
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
