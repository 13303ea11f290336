"""benchmarks/overhead_stacks.py (issue 14's benchmarks): the torch.compile and 2-rank FSDP2 stacks,
each in its quickest mode; the report's structure, the graph-break check and the collective census.

No wall-clock figure is checked (the ratios of a smoke run on a busy machine mean nothing); what is
checked are counts, compared with oracles from outside the benchmark: `torch._dynamo.explain` for the
graphs and breaks of the unwatched model, FSDP2's own schedule for the collectives it issues, and
a hand-made census for the added-collectives summary. The compile stack runs in this process with
the `aot_eager` backend (dynamo's graphs, breaks and recompiles do not depend on the backend;
inductor's C++ builds would take minutes here); FSDP2 runs as the command a user types (its ranks
are spawned processes that must import the script).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch._dynamo

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "overhead_stacks.py"
QUICK_COMPILE = ["--stack", "compile", "--quick", "--backend", "aot_eager", "--threads", "1"]
ROW = re.compile(r"^(?P<arm>eager|eager\+probes|compiled|compiled\+probes)\s+(?P<steps>\d+)\s+(?P<median>[\d.]+)\s+"
                 r"(?P<mean>[\d.]+)\s+(?P<ratios>(?:(?:[\d.]+x|-)\s+){3})(?P<budget><=1\.05x|-)\s+(?:PASS|FAIL)?\s*"
                 r"(?P<loss>[\d.]+)\s*(?:graphs/breaks/recompiles: alone (?P<alone>\d+/\d+/\d+), shared \d+/\d+/\d+)?$")
FSDP_ROW = {"unwatched": re.compile(r"^[01]\s+unwatched\s+\d+\s+[\d.]+\s+[\d.]+\s+(?:-\s+){4}[\d.]+$"),
            "watched": re.compile(r"^[01]\s+watched\s+\d+\s+[\d.]+\s+[\d.]+\s+(?:\d+\.\d{3}x\s+){3}<=1\.05x\s+"
                                  r"(?:PASS|FAIL)\s+[\d.]+$")}


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("overhead_stacks_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark script, imported as a module."""
    return _load()


def _run_main(bench: ModuleType, argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out):
            rc = bench.main(argv)
    finally:
        torch._dynamo.reset()
        torch.set_num_threads(threads)
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def compile_report(bench: ModuleType) -> tuple[int, str]:
    """Exit status and printed report of the quick compile stack."""
    return _run_main(bench, QUICK_COMPILE)


def _rows(text: str) -> dict[str, dict[str, Any]]:
    return {m["arm"]: m.groupdict() for m in map(ROW.match, text.splitlines()) if m}


def test_compile_report_has_every_arm(compile_report: tuple[int, str]) -> None:
    rc, text = compile_report
    assert rc == 0, text
    rows = _rows(text)
    assert set(rows) == {"eager", "eager+probes", "compiled", "compiled+probes"}, text
    for arm, row in rows.items():
        assert int(row["steps"]) == 2 * 3, row  # --quick: 2 rounds of 3 timed steps
        assert (row["budget"] == "<=1.05x") == arm.endswith("+probes")
        assert (row["alone"] is not None) == arm.startswith("compiled")


def test_unwatched_counts_match_dynamo_explain(bench: ModuleType, compile_report: tuple[int, str]) -> None:
    """The report's graphs/breaks for the unwatched compiled model equal `torch._dynamo.explain`'s."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = bench.AttentionMoE(bench.QUICK_SIZE)
    x_BT, _ = bench.make_batches(bench.QUICK_SIZE, 1, 0)[0]
    explained = torch._dynamo.explain(model)(x_BT)
    torch._dynamo.reset()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    rows = _rows(compile_report[1])
    assert rows["compiled"]["alone"] == f"{explained.graph_count}/{explained.graph_break_count}/0"


def test_watched_adds_no_break_and_computes_the_same(compile_report: tuple[int, str]) -> None:
    text = compile_report[1]
    rows = _rows(text)
    assert rows["compiled+probes"]["alone"] == rows["compiled"]["alone"] == "1/0/0"
    assert "dynamo over the timed rounds (both compiled arms): graphs 0, breaks 0, recompiles 0" in text
    assert "CHECK watched adds 0 graph breaks, graphs and recompiles: added {'graphs': 0, 'breaks': 0, " \
           "'recompiles': 0}: OK" in text
    losses = {arm: float(row["loss"]) for arm, row in rows.items()}
    assert losses["eager+probes"] == losses["eager"] and losses["compiled+probes"] == losses["compiled"], losses
    assert abs(losses["compiled"] - losses["eager"]) <= 1e-5 * abs(losses["eager"]), losses


def test_compile_check_catches_an_added_break(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """A watched model whose hook breaks the graph makes the check fail and the exit status 1."""
    build = bench.build_arm

    def breaking_arm(name: str, *args: Any, **kwargs: Any) -> Any:
        arm = build(name, *args, **kwargs)
        if name == "compiled+probes":
            arm.model.layers[0].register_forward_hook(lambda *_: torch._dynamo.graph_break())
        return arm

    monkeypatch.setattr(bench, "build_arm", breaking_arm)
    rc, text = _run_main(bench, QUICK_COMPILE + ["--rounds", "1", "--steps-per-round", "1", "--warmup", "1"])
    assert rc == 1, text
    rows = _rows(text)
    graphs, breaks, _ = map(int, rows["compiled+probes"]["alone"].split("/"))
    assert breaks >= 1 and graphs >= 2, text
    assert rows["compiled"]["alone"] == "1/0/0"
    assert re.search(r"CHECK watched adds 0 graph breaks, graphs and recompiles: added .*: FAILED", text), text


def test_spans_and_added_collectives(bench: ModuleType) -> None:
    assert bench.spans([0, 2, 3, 4, 7, 9, 10]) == "0, 2-4, 7, 9-10"
    usual = {"all_gather_single": 5, "reduce_scatter_single": 3}
    unwatched = [dict(usual), dict(usual), {"all_gather_single": 6, "reduce_scatter_single": 3}]
    watched = [{**usual, "all_gather_single": 6}, {**usual, "all_reduce": 1}, dict(usual),
               {**usual, "all_reduce": 2}]
    assert bench.added_collectives(unwatched, watched) == {
        "+1 all_gather_single": [0], "+1 all_reduce": [1], "+0": [2], "+2 all_reduce": [3]}


@pytest.fixture(scope="module")
def fsdp2_report() -> subprocess.CompletedProcess:
    """The quick FSDP2 stack, run as a user runs it."""
    return subprocess.run([sys.executable, str(SCRIPT), "--stack", "fsdp2", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_fsdp2_report_structure(fsdp2_report: subprocess.CompletedProcess) -> None:
    assert fsdp2_report.returncode == 0, fsdp2_report.stderr[-3000:]
    lines = fsdp2_report.stdout.splitlines()
    rows = [line for line in lines if re.match(r"^[01]\s+(unwatched|watched)\s", line)]
    assert [tuple(r.split()[:3]) for r in rows] == [
        ("0", "unwatched", "6"), ("0", "watched", "6"), ("1", "unwatched", "6"), ("1", "watched", "6")], lines
    for row in rows:
        assert FSDP_ROW[row.split()[1]].match(row), row
    losses = {(r.split()[0], r.split()[1]): r.split()[-1] for r in rows}
    for rank in "01":  # the same model on the same batches: recording changes nothing it computes
        assert losses[(rank, "watched")] == losses[(rank, "unwatched")], losses
    assert any(re.match(r"FSDP2 verdict \(both ratios <= 1\.05x on every rank\): (PASS|FAIL)$", x) for x in lines)


def test_fsdp2_collective_census(fsdp2_report: subprocess.CompletedProcess) -> None:
    """The unwatched census is FSDP2's own schedule; the probes' additions cover every step, at most one each."""
    quick = {"layers": 2, "steps": 2 + 2 * 3}  # QUICK_SIZE's blocks; warm-up + rounds x steps per arm
    # forward: one all-gather per group (blocks + root); backward: the blocks, resharded after
    # forward, gather again (the root is not resharded); one reduce-scatter per group
    groups = quick["layers"] + 1
    fsdp_own = groups + quick["layers"] + groups
    census = [x for x in fsdp2_report.stdout.splitlines() if x.startswith("rank ") and "collectives per step" in x]
    assert len(census) == 2, fsdp2_report.stdout
    for line in census:
        m = re.match(r"rank [01] collectives per step: unwatched \[(\d+)\]; added by the probes: (.*)$", line)
        assert m and int(m[1]) == fsdp_own, line
        covered: list[int] = []
        for n, what, where in re.findall(r"([+-]\d+)(?: (\w+))? at steps ([\d, -]+?)(?=;|$)", m[2]):
            assert 0 <= int(n) <= 1, line
            for part in where.split(", "):
                lo, _, hi = part.partition("-")
                covered += range(int(lo), int(hi or lo) + 1)
        assert sorted(covered) == list(range(quick["steps"])), line
