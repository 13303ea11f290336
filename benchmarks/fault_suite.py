"""The fault suite's scorecard: recall on the planted faults, false alarms on the healthy runs.

    .venv/bin/python benchmarks/fault_suite.py                 # the shipped sample_runs/
    .venv/bin/python benchmarks/fault_suite.py --regenerate    # record every sample afresh first (~3 min)

Faulty runs list what they planted under `expected_findings` in their config (see
sample_runs/make_samples.py); a run without faults counts every flag it raises as a false alarm.
Goal: recall 100 %, false alarms 0. Exit status 1 when the goal is missed.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faults.findings import FAULTY, HEALTHY, Finding, alarms, check_run, expected_findings  # noqa: E402
from inspector.views.live import LiveRun  # noqa: E402


def score(runs: Path) -> tuple[list[Finding], dict[str, list[str]]]:
    """Findings of every faulty run and alarms of every healthy run under `runs`."""
    findings = [f for name in FAULTY for f in check_run(runs / name)]
    false = {name: alarms(runs / name) for name in HEALTHY}
    for name in HEALTHY:
        assert not expected_findings(LiveRun(runs / name)), f"{name} is meant to be healthy"
    return findings, false


def main() -> int:
    """Print the scorecard; 1 when a fault was missed or a healthy run raised an alarm."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=str(ROOT / "sample_runs"), help="folder holding the sample runs")
    p.add_argument("--regenerate", action="store_true", help="record the sample runs afresh into a temp folder")
    a = p.parse_args()
    runs = Path(a.runs)
    with tempfile.TemporaryDirectory() as tmp:
        if a.regenerate:
            runs = Path(tmp)
            subprocess.run([sys.executable, str(ROOT / "sample_runs" / "make_samples.py"), "--out", tmp], check=True)
        findings, false = score(runs)
    console = Console(width=160)
    table = Table(title="planted faults")
    for col in ("run", "fault", "found", "what the Inspector says"):
        table.add_column(col)
    for f in findings:
        table.add_row(f.run, f.fault, "[green]yes[/]" if f.found else "[red]NO[/]", f.detail)
    console.print(table)
    healthy = Table(title="healthy runs")
    for col in ("run", "false alarms", "which"):
        healthy.add_column(col)
    for name, flagged in false.items():
        healthy.add_row(name, str(len(flagged)), "; ".join(flagged) or "-")
    console.print(healthy)
    found = sum(f.found for f in findings)
    n_false = sum(len(v) for v in false.values())
    console.print(f"recall {found}/{len(findings)} = {found / len(findings):.0%} (goal 100 %); "
                  f"false alarms on {len(false)} healthy runs: {n_false} (goal 0)")
    return 0 if found == len(findings) and n_false == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
