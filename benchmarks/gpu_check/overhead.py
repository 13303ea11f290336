"""Stage 3, probe overhead on the GPU: `benchmarks/overhead.py --device cuda --config small`.

Runs the benchmark's `none` and `default` variants interleaved (its own method and budget: default
probes <= 1.02x the unwatched step, median ratio) and its profiler pass (`--profile-variants
none,default`: `torch.profiler` events that block the host, and `set_sync_debug_mode("warn")`
warnings by Python thread), then reads its JSON. Syncs added by the probes = default minus none:
- sync-debug warnings on the training threads (every thread but the Inspector's own), budget 0;
- blocking profiler events (`cudaStreamSynchronize`, `cudaDeviceSynchronize`, `cudaMemcpy`,
  `aten::_local_scalar_dense` = `.item()`) on any thread, budget 0. `cudaEventSynchronize` is
  reported but not held to 0: the Recorder's writer thread waits on the copies' and timing
  events by design (the profiler's thread ids do not say which thread waited).
Sizes: 9 rounds x 10 steps after 5 warm-up steps, so the profiled steps (3; the profiler's event
processing grows with the engine MoE's many small kernels) start at step 100, where every sampled
probe records. In a dry run the same plumbing runs on CPU (`--config debug`), with no profiler pass.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.common import Result, dry_run, fmt, judge, quick, run_stage

ROOT = Path(__file__).resolve().parents[2]
BUDGET_RATIO = 1.02
WRITER_WAITS = ("cudaEventSynchronize",)


def command(json_path: Path) -> list[str]:
    """The overhead.py command line of this mode."""
    base = [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--variants", "none,default",
            "--json", str(json_path)]
    if dry_run():
        small = ["--batch-size", "4", "--seq-len", "32", "--rounds", "1", "--steps-per-round", "3", "--warmup", "1"]
        return base + ["--device", "cpu", "--config", "debug", *(small if quick() else ["--quick"])]
    sizes = (["--rounds", "2", "--steps-per-round", "5", "--warmup", "2", "--profile-steps", "4"] if quick()
             else ["--rounds", "9", "--steps-per-round", "10", "--warmup", "5", "--profile-steps", "3"])
    return base + ["--device", "cuda", "--config", "small", *sizes]


def sync_figures(syncs: list[dict[str, Any]]) -> dict[str, Any]:
    """Syncs added by `default` over `none` (see the module docstring)."""
    by = {s["variant"]: s for s in syncs}
    if "none" not in by or "default" not in by:
        return {}
    base, dflt = by["none"], by["default"]
    names = sorted(set(base["sync_events"]) | set(dflt["sync_events"]))
    added = {n: dflt["sync_events"].get(n, 0) - base["sync_events"].get(n, 0) for n in names}
    bg = set(dflt.get("background_threads", []))
    train_warn = sum(c for t, c in dflt["sync_debug_warnings_by_thread"].items() if t not in bg)
    base_warn = sum(base["sync_debug_warnings_by_thread"].values())
    return {"sync events added (all threads)": added,
            "blocking sync events added": sum(v for n, v in added.items() if n not in WRITER_WAITS),
            "writer-thread event waits": added.get("cudaEventSynchronize", 0),
            "training-thread sync warnings added": train_warn - base_warn,
            "profiled steps": dflt["steps"]}


def body(out: Path, res: Result) -> None:
    """Run overhead.py, read its JSON, judge ratio and syncs."""
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    json_path = work / "overhead.json"
    json_path.unlink(missing_ok=True)
    cmd = command(json_path)
    print(" ".join(cmd), flush=True)
    limit = float(os.environ.get("GPU_CHECK_TIMEOUT", "600")) - 15
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=max(limit, 10)).returncode
    except subprocess.TimeoutExpired:
        res.status = "timeout"
        res.verdict = "FAIL"
        res.notes.append(f"overhead.py ran past {limit:.0f} s: lower --rounds in benchmarks/gpu_check/overhead.py")
        return
    res.figures["overhead.py rc"] = rc
    if not json_path.exists():
        res.status, res.verdict = "error", "FAIL"
        res.notes.append("overhead.py wrote no JSON (see logs/overhead.log)")
        return
    data = json.loads(json_path.read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    d, n = rows["default"], rows["none"]
    fig = res.figures
    fig["median ms none/default"] = f"{fmt(n['median_ms'], '.2f')} / {fmt(d['median_ms'], '.2f')}"
    fig["ratio (median)"] = round(d["ratio"], 4)
    fig["paired ratio"] = round(d["paired_ratio"], 4)
    fig["mean ratio"] = round(d["mean_ratio"], 4)
    fig["final loss none/default"] = f"{n['final_loss']:.6f} / {d['final_loss']:.6f}"
    fig["timed steps per variant"] = d["steps"]
    syncs = sync_figures(data.get("syncs") or [])
    fig.update(syncs)
    res.budget = f"ratio <= {BUDGET_RATIO}x; syncs added 0"
    if dry_run():
        res.verdict = "n/a"  # CPU timings on a busy machine say nothing of the GPU budget
        res.notes.append("dry run: CPU debug config, no profiler pass (CUDA only)")
        return
    if not syncs:
        res.notes.append("no sync counts: the profiler pass failed (see logs/overhead.log)")
    ok = (rc == 0 and d["ratio"] <= BUDGET_RATIO and bool(syncs) and syncs["blocking sync events added"] == 0
          and syncs["training-thread sync warnings added"] == 0)
    judge(res, ok)


if __name__ == "__main__":
    sys.exit(run_stage("overhead", body))
