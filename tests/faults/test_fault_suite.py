"""The seeded fault suite: every fault planted in the sample runs is named by `inspector summary`
(kind, step within the stated tolerance, module / head / expert / rank), and the healthy runs raise
no alarm. `benchmarks/fault_suite.py` prints the same as a recall / false-alarm table."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inspector.views.live import LiveRun
from tests.conftest import ROOT, inspector_cli
from tests.faults.findings import FAULTY, HEALTHY, alarms, check_run, expected_findings

SAMPLES = ROOT / "sample_runs"


def test_the_suite_plants_ten_faults_half_of_them_in_hugging_face_models() -> None:
    planted = {name: expected_findings(LiveRun(SAMPLES / name)) for name in FAULTY}
    assert sum(map(len, planted.values())) >= 10
    hf = sum(len(v) for k, v in planted.items() if k.startswith("hf-"))
    assert hf >= 5 and sum(map(len, planted.values())) - hf >= 5
    assert all(not expected_findings(LiveRun(SAMPLES / name)) for name in HEALTHY)


@pytest.mark.parametrize("name", FAULTY)
def test_every_planted_fault_is_named(name: str) -> None:
    missed = [f"{f.fault}: {f.detail}" for f in check_run(SAMPLES / name) if not f.found]
    assert missed == []


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_runs_raise_no_alarm(name: str) -> None:
    assert alarms(SAMPLES / name) == []


@pytest.mark.parametrize("name", [n for n in FAULTY if n != "straggler-4rank"])
def test_summary_text_names_kind_step_and_place(name: str) -> None:
    text = inspector_cli("summary", str(SAMPLES / name), "--width", "240").stdout
    for e in expected_findings(LiveRun(SAMPLES / name)):
        if e["check"] == "anomaly":
            assert e["kind"] in text and e.get("module", "") in text, e["fault"]
        elif e["check"] == "collapsed_head":
            assert f"L{e['layer']}·H{e['head']}" in text, e["fault"]
        elif e["check"] == "starved_expert":
            assert e["module"] in text and f"[{e['expert']}]" in text, e["fault"]


def test_straggler_summary_names_the_rank() -> None:
    text = inspector_cli("summary", str(SAMPLES / "straggler-4rank"), "--width", "240").stdout
    assert "rank 2" in text


@pytest.mark.slow
def test_hugging_face_faults_are_found_in_a_fresh_recording(tmp_path: Path) -> None:
    for name in ("hf-llama-faults", "hf-bert-faults"):
        subprocess.run([sys.executable, str(SAMPLES / "make_samples.py"), "--only", name, "--out", str(tmp_path)],
                       check=True, capture_output=True, cwd=ROOT)
        missed = [f"{f.fault}: {f.detail}" for f in check_run(tmp_path / name) if not f.found]
        assert missed == [], name
