"""What every stage shares: the run mode from the environment, the result file, the stage wrapper."""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

STAGES: tuple[str, ...] = ("env", "cuda_tests", "overhead", "nvml", "fsdp_compile", "sample_run", "determinism")
"""Every stage, in the order the driver runs them."""

NO_CUDA = "skipped: no CUDA"


@dataclass
class Result:
    """One stage's outcome: `status` (ok, failed, error, timeout, skipped: …), the figures measured,
    the budget they are held to and the verdict (PASS, FAIL, or n/a where a dry run cannot judge)."""

    stage: str
    status: str = "ok"
    figures: dict[str, Any] = field(default_factory=dict)
    budget: str = ""
    verdict: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def dry_run() -> bool:
    """True when the stages run on CPU only (`GPU_CHECK_DRY_RUN=1`)."""
    return os.environ.get("GPU_CHECK_DRY_RUN", "") not in ("", "0")


def quick() -> bool:
    """True for the smallest sizes (`GPU_CHECK_QUICK=1`)."""
    return os.environ.get("GPU_CHECK_QUICK", "") not in ("", "0")


def _listed(var: str, stage: str) -> bool:
    return stage in {s.strip() for s in os.environ.get(var, "").split(",")}


def result_path(out: Path, stage: str) -> Path:
    """Where `stage` writes its result."""
    return out / "results" / f"{stage}.json"


def write_result(out: Path, res: Result) -> None:
    """Write `res` as JSON (temp file + rename, so a killed stage leaves no half file)."""
    path = result_path(out, res.stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(res), indent=1, default=str))
    tmp.replace(path)


def run_stage(stage: str, body: Callable[[Path, Result], None]) -> int:
    """Run `body(out, result)` as stage `stage` with `out` from argv[1]; write the result whatever
    happens (an exception is status "error" with its message, verdict FAIL); exit code 0 unless
    the verdict is FAIL."""
    out = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "benchmarks/gpu_out"))
    res = Result(stage)
    t0 = time.monotonic()
    print(f"== stage {stage} ({'CPU dry run' if dry_run() else 'GPU'}{', quick' if quick() else ''}) ==", flush=True)
    try:
        if _listed("GPU_CHECK_FAIL", stage):
            raise RuntimeError(f"forced failure (GPU_CHECK_FAIL={os.environ['GPU_CHECK_FAIL']})")
        if _listed("GPU_CHECK_HANG", stage):
            print("forced hang (GPU_CHECK_HANG): sleeping until the driver's timeout", flush=True)
            time.sleep(3600)
        body(out, res)
    except Exception as exc:
        traceback.print_exc()
        res.status = "error"
        res.verdict = "FAIL"
        res.notes.append(f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    res.seconds = round(time.monotonic() - t0, 1)
    write_result(out, res)
    print(f"== stage {stage}: {res.status}, verdict {res.verdict or '-'}, {res.seconds} s ==", flush=True)
    print(json.dumps(res.figures, indent=1, default=str), flush=True)
    return 1 if res.verdict == "FAIL" else 0


def cuda_ready() -> bool:
    """True when this stage should use the GPU: not a dry run and torch sees CUDA."""
    if dry_run():
        return False
    import torch

    return torch.cuda.is_available()


def no_cuda(res: Result, why: str = "") -> None:
    """Mark `res` as skipped for want of CUDA: FAIL outside a dry run (the kit exists to run there)."""
    res.status = NO_CUDA
    res.verdict = "n/a" if dry_run() else "FAIL"
    if why:
        res.notes.append(why)


def judge(res: Result, passed: bool) -> None:
    """Set the verdict PASS or FAIL (a FAIL of a stage that ran makes its status "failed")."""
    res.verdict = "PASS" if passed else "FAIL"
    if not passed and res.status == "ok":
        res.status = "failed"


def fmt(x: Any, spec: str = ".3g") -> str:
    """A number formatted with `spec`, or N/A for None/NaN."""
    if x is None:
        return "N/A"
    try:
        if x != x:  # NaN
            return "N/A"
        return format(x, spec)
    except (TypeError, ValueError):
        return str(x)
