"""benchmarks/gpu_check.sh, the GPU readiness kit, run here in its CPU dry run (issue 14, item 8).

The kit has not run on a GPU from these tests: they check its plumbing. One module-scoped run of
the real script (`--cpu-dry-run --quick`) with its `env` stage made to hang past a 5 s timeout: the
summary must list every stage with a status, report the timeout as FAIL, have run every other
stage after it, show their figures (the NVML stage's GPU rows come from `fake_nvml`'s fixed
readings, through the real sampler, run and reader) and leave its outputs where the script says.
A second, small run makes a stage raise (and packs); others check argument errors, which tests the
CUDA selection plugin keeps (real pytest), the throttle-reason names and the sync arithmetic.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

import inspector
from benchmarks.gpu_check import fake_nvml
from benchmarks.gpu_check.common import STAGES
from inspector.sysmon.nvml import clock_event_names
from benchmarks.gpu_check.overhead import sync_figures

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(out: Path, *args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    for var in ("GPU_CHECK_FAIL", "GPU_CHECK_HANG"):
        full_env.setdefault(var, "")
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd="/")


def _summary(out: Path) -> dict[str, dict[str, Any]]:
    path = out / "summary.json"
    return {r["stage"]: r for r in json.loads(path.read_text())} if path.exists() else {}


@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole dry run, with `env` hanging past its 5 s timeout."""
    out = tmp_path_factory.mktemp("gpu_out")
    proc = _run(out, "--cpu-dry-run", "--quick", GPU_CHECK_HANG="env", GPU_CHECK_TIMEOUT_ENV="5")
    return {"out": out, "proc": proc, "summary": _summary(out)}


def test_summary_lists_every_stage_with_a_status(dry: dict[str, Any]) -> None:
    proc, summary = dry["proc"], dry["summary"]
    assert list(summary) == list(STAGES), proc.stdout + proc.stderr
    table = proc.stdout[proc.stdout.index("stage "):]
    for stage in STAGES:
        row = next(line for line in table.splitlines() if line.startswith(stage + " "))
        assert summary[stage]["status"] and summary[stage]["status"] != "not run"
        assert summary[stage]["status"][:20] in row and summary[stage]["verdict"] in row


def test_a_timed_out_stage_is_reported_and_not_fatal(dry: dict[str, Any]) -> None:
    proc, summary = dry["proc"], dry["summary"]
    assert proc.returncode == 1                               # a FAIL, and the script still finished
    assert summary["env"]["status"] == "timeout (5 s)" and summary["env"]["verdict"] == "FAIL"
    assert f"{len(STAGES) - 1} of {len(STAGES)} stages without FAIL; FAIL: env\n" in proc.stdout
    for stage in STAGES[1:]:                                   # every later stage ran
        assert summary[stage]["verdict"] in ("PASS", "n/a"), (stage, summary[stage])


def test_each_stage_reports_its_figures(dry: dict[str, Any]) -> None:
    s = dry["summary"]
    assert s["cuda_tests"]["status"] == "skipped: no CUDA"     # every selected test needs a GPU here
    assert s["cuda_tests"]["figures"]["selected"] == s["cuda_tests"]["figures"]["skipped"] >= 2
    assert "tests/probes/test_gradients.py::test_cuda_steps_never_synchronise_the_training_thread" in \
        s["cuda_tests"]["figures"]["tests"]
    assert s["overhead"]["figures"]["ratio (median)"] > 0 and s["overhead"]["verdict"] == "n/a"
    assert s["fsdp_compile"]["figures"]["graph breaks added"] == 0
    text = (dry["out"] / "summary.txt").read_text()
    for stage in STAGES:
        for name in s[stage]["figures"]:
            assert f"  {name}: " in text, (stage, name)


def test_nvml_rows_come_back_through_the_run(dry: dict[str, Any]) -> None:
    """The fake NVML's readings, sampled at 2 Hz into a run and read back, are what the stage shows."""
    fig = dry["summary"]["nvml"]["figures"]
    f = fake_nvml
    assert fig["gpu0 gpu_util"] == f"{f.UTIL_PCT} / {f.UTIL_PCT} / {f.UTIL_PCT}"
    assert fig["gpu0 power_w"] == " / ".join([f"{f.POWER_MW / 1000:.4g}"] * 3)
    assert fig["gpu0 mem_used"] == " / ".join([f"{f.MEM_USED / 2**30:.4g}"] * 3) + " GiB"
    assert fig["gpu0 sm_clock_mhz"].startswith(f"{f.SM_CLOCK_MHZ} / ")
    assert fig["gpu0 torch_allocated"] == "N/A"               # no CUDA allocator on the CPU
    assert set(fig["throttle reasons (samples)"]) == {"sw_power_cap"}
    run = inspector.open_run(dry["out"] / "work" / "nvml-run")
    gpu = run.to_pandas("system").query("device == 'gpu0'")
    assert len(gpu) >= 2 and fig["gpu0 samples"].startswith(f"{len(gpu)} at ")


def test_outputs_are_where_the_script_says(dry: dict[str, Any]) -> None:
    out = dry["out"]
    for stage in STAGES:
        assert (out / "logs" / f"{stage}.log").exists()
        assert (out / "results" / f"{stage}.rc").exists()
    assert not (out / "results" / "env.json").exists()         # killed before it wrote anything
    run = inspector.open_run(out / "sample_runs" / "dryrun-debug")
    assert {"scalar", "timing", "grad_stats", "expert_load", "attention_map"} <= set(run.kinds())
    loss = run.to_pandas("scalar", names=["loss"])
    assert sorted(loss["step"]) == list(range(8))             # the 8 steps of the dry run
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"./summary.txt", "./logs/overhead.log", "./sample_runs/dryrun-debug/run.json"} <= names


def test_a_raising_stage_is_reported_and_pack_keeps_three_files(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--cpu-dry-run", "--quick", "--stages", "env,cuda_tests", "--pack",
                GPU_CHECK_FAIL="env")
    summary = _summary(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert summary["env"]["status"] == "error" and summary["env"]["verdict"] == "FAIL"
    assert any("forced failure" in n for n in summary["env"]["notes"])
    assert summary["cuda_tests"]["verdict"] == "PASS"          # ran after the failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.tar.gz", "summary.json", "summary.txt"]
    with tarfile.open(tmp_path / "gpu_check.tar.gz") as tar:
        assert "./logs/env.log" in tar.getnames()


def test_unknown_stage_is_refused(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--stages", "env,nope")
    assert proc.returncode == 2 and "unknown stage nope" in proc.stderr


def test_cuda_selection_keeps_exactly_the_tests_skipped_without_cuda(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(
        "import pytest, torch\n"
        "@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')\n"
        "def test_marked(): pass\n"
        "def test_runtime_skip():\n"
        "    if not torch.cuda.is_available():\n"
        "        pytest.skip('no GPU')\n"
        "@pytest.mark.skipif(True, reason='needs transformers')\n"
        "def test_other_skip(): pass\n"
        "def test_plain(): pass\n")
    selected = tmp_path / "selected.txt"
    env = {**os.environ, "GPU_CHECK_SELECTED": str(selected), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "benchmarks.gpu_check.cuda_select", "-p",
                           "no:cacheprovider", "-q", "test_sample.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert selected.read_text().split() == ["test_sample.py::test_marked", "test_sample.py::test_runtime_skip"]


def test_throttle_reasons_named_from_nvml_bits() -> None:
    """Our bit table against pynvml's own constants (nvidia-ml-py is a dependency)."""
    import pynvml as nv

    mask = nv.nvmlClocksThrottleReasonGpuIdle | nv.nvmlClocksThrottleReasonSwPowerCap
    assert clock_event_names(mask) == "gpu_idle+sw_power_cap"
    assert clock_event_names(nv.nvmlClocksThrottleReasonHwThermalSlowdown | nv.nvmlClocksThrottleReasonSyncBoost) \
        == "sync_boost+hw_thermal"
    assert clock_event_names(0) == "none"


def test_syncs_added_by_the_probes_count_the_training_threads_only() -> None:
    """overhead.py's JSON (`syncs`): the writer thread's event waits are reported apart."""
    syncs = [
        {"variant": "none", "steps": "100..107", "sync_events": {"cudaStreamSynchronize": 2},
         "sync_debug_warnings_by_thread": {"MainThread": 1}, "background_threads": []},
        {"variant": "default", "steps": "100..107",
         "sync_events": {"cudaStreamSynchronize": 2, "cudaEventSynchronize": 40, "aten::_local_scalar_dense": 3},
         "sync_debug_warnings_by_thread": {"MainThread": 4, "inspector-writer": 9},
         "background_threads": ["inspector-writer", "inspector-sysmon"]},
    ]
    got = sync_figures(syncs)
    assert got["sync events added (all threads)"] == {"aten::_local_scalar_dense": 3, "cudaEventSynchronize": 40,
                                                      "cudaStreamSynchronize": 0}
    assert got["blocking sync events added"] == 3
    assert got["writer-thread event waits"] == 40
    assert got["training-thread sync warnings added"] == 3
