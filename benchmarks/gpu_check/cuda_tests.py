"""Stage 2, the CUDA tests: every test that is skipped without CUDA (see `cuda_select`), run by pytest.

Candidate files are the test files under tests/ (UI tests apart: they never touch CUDA; and the
test of this kit) that test `cuda.is_available` or give CUDA/GPU as a skip reason; the plugin keeps the tests among them that need it. Counts come from pytest's
JUnit XML. PASS on a GPU: at least one test ran, none failed, none was skipped; in a dry run every
selected test is expected to skip, and none may fail.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from benchmarks.gpu_check.common import Result, dry_run, judge, run_stage, NO_CUDA

ROOT = Path(__file__).resolve().parents[2]
UI_DIRS = ("dash_app", "tui")
CUDA_GATE = re.compile(r"cuda\.is_available|reason=[^)]*\b(?:CUDA|GPU)\b", re.IGNORECASE)
"""What a file that can skip a test for want of CUDA contains (the skip's condition or reason)."""
OWN_TEST = "test_gpu_check_script.py"  # runs this kit: never from inside it


def candidate_files(tests: Path = ROOT / "tests") -> list[str]:
    """Test files (relative to the repo root) that can skip for want of CUDA, outside the UI folders."""
    out = []
    for path in sorted(tests.rglob("test_*.py")):
        rel = path.relative_to(ROOT)
        if any(part in UI_DIRS for part in rel.parts) or path.name == OWN_TEST:
            continue
        if CUDA_GATE.search(path.read_text(errors="replace")):
            out.append(str(rel))
    return out


def junit_counts(xml_path: Path) -> dict[str, list[str]]:
    """Test ids by outcome (passed, failed, error, skipped) from a JUnit XML report."""
    out: dict[str, list[str]] = {"passed": [], "failed": [], "error": [], "skipped": []}
    if not xml_path.exists():
        return out
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        outcome = ("failed" if "failure" in kinds else "error" if "error" in kinds
                   else "skipped" if "skipped" in kinds else "passed")
        out[outcome].append(name)
    return out


def body(out: Path, res: Result) -> None:
    """Run the selected tests; PASS as the module docstring says."""
    files = candidate_files()
    res.figures["candidate files"] = len(files)
    if not files:
        judge(res, False)
        res.notes.append("no test file mentions CUDA")
        return
    xml = out / "work" / "cuda_tests.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    selected = out / "work" / "cuda_tests_selected.txt"
    # Installed plugins are not autoloaded (one importing a UI toolkit the GPU machine lacks would stop
    # the run); pytest-timeout is loaded by name where it is installed.
    env = {**os.environ, "GPU_CHECK_SELECTED": str(selected), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    timeout = ["-p", "pytest_timeout", "--timeout", "120"] if importlib.util.find_spec("pytest_timeout") else []
    cmd = [sys.executable, "-m", "pytest", "-p", "benchmarks.gpu_check.cuda_select", "-p", "no:cacheprovider",
           *timeout, "--continue-on-collection-errors", "-q", "-rA", f"--junitxml={xml}", *files]
    print(" ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    counts = junit_counts(xml)
    names = selected.read_text().split() if selected.exists() else []
    res.figures.update({"selected": len(names), "passed": len(counts["passed"]), "failed": len(counts["failed"]),
                        "errors": len(counts["error"]), "skipped": len(counts["skipped"]), "pytest rc": rc})
    res.figures["tests"] = names
    bad = counts["failed"] + counts["error"]
    if bad:
        res.notes.append("failing: " + ", ".join(bad))
    res.budget = "all pass, none skipped"
    if dry_run():
        judge(res, not bad and rc in (0, 5))
        if names and len(counts["skipped"]) == len(names):
            res.status = NO_CUDA
        return
    judge(res, bool(names) and not bad and not counts["skipped"] and len(counts["passed"]) == len(names))


if __name__ == "__main__":
    sys.exit(run_stage("cuda_tests", body))
