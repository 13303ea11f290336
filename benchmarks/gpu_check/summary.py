"""The kit's last step: one table of every stage (status, figures, budget, verdict) from the results.

`python -m benchmarks.gpu_check.summary OUT` reads `OUT/results/<stage>.json` and the driver's
`OUT/results/<stage>.rc` ("<exit code> <seconds> <timeout>"); a stage that wrote no result (killed
at its timeout, crashed before its wrapper ran) is shown from its exit code. Writes
`OUT/summary.txt` (the table, then every figure of every stage) and `OUT/summary.json`, prints the
table, and exits 1 when any stage's verdict is FAIL.
"""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.common import STAGES, fmt

WIDTH = 110
HEADLINE = {
    "env": ("device", "torch", "cuda available"),
    "cuda_tests": ("selected", "passed", "failed", "skipped"),
    "overhead": ("ratio (median)", "paired ratio", "blocking sync events added", "training-thread sync warnings added"),
    "nvml": ("gpu0 samples", "gpu0 gpu_util", "gpu0 power_w", "host samples", "throttle reasons (samples)"),
    "fsdp_compile": ("graph breaks added", "recompiles added", "grad norm watched vs unwatched, max rel diff",
                     "recorded grad_norm/global vs loop's, max rel diff"),
    "sample_run": ("run", "timing rows / finite and > 0", "step total ms (median)"),
    "determinism": ("probes switched off", "losses bitwise equal", "first error"),
}


def read_rc(path: Path) -> tuple[int | None, float | None, int | None]:
    """(exit code, seconds, timeout) the driver wrote for a stage, Nones where absent."""
    try:
        parts = path.read_text().split()
        return int(parts[0]), float(parts[1]), int(parts[2])
    except (OSError, ValueError, IndexError):
        return None, None, None


def load(out: Path, stage: str) -> dict[str, Any]:
    """The stage's result, completed from the driver's exit code (timeout, crash, not run)."""
    rc, seconds, limit = read_rc(out / "results" / f"{stage}.rc")
    path = out / "results" / f"{stage}.json"
    res: dict[str, Any] = {"stage": stage, "status": "not run", "figures": {}, "budget": "", "verdict": "FAIL",
                           "notes": [], "seconds": seconds}
    if path.exists():
        try:
            res.update(json.loads(path.read_text()))
        except ValueError as exc:
            res.update(status="error", notes=[f"unreadable result: {exc}"])
    if rc in (124, 137) and limit is not None:
        res.update(status=f"timeout ({limit} s)", verdict="FAIL")
        res["notes"] = [*res.get("notes", []), f"killed at its {limit} s timeout; see logs/{stage}.log"]
    elif not path.exists() and rc is not None:
        res.update(status=f"crashed (rc {rc})", verdict="FAIL", notes=[f"no result written; see logs/{stage}.log"])
    if seconds is not None:
        res["seconds"] = seconds
    res["limit"] = limit
    return res


def headline(res: dict[str, Any]) -> str:
    """The few figures that go in the table (all of them are in the detail section)."""
    fig = res.get("figures", {})
    keys = [k for k in HEADLINE.get(res["stage"], ()) if k in fig] or list(fig)[:3]
    parts = [f"{k}: {fig[k] if not isinstance(fig[k], float) else fmt(fig[k], '.4g')}" for k in keys]
    parts += res.get("notes", [])[:1]
    return "; ".join(str(p) for p in parts) or "-"


def table(results: list[dict[str, Any]]) -> str:
    """The one-screen table: per stage a line of stage, status, time, verdict and budget, then its
    headline figures wrapped on at most two lines (every figure is in the details)."""
    lines = [f"{'stage':<13}{'status':<26}{'time':>6}  {'verdict':<8}budget", "-" * WIDTH]
    for r in results:
        t = f"{r['seconds']:.0f}s" if r.get("seconds") is not None else "-"
        budget = textwrap.shorten(r.get("budget") or "-", WIDTH - 55, placeholder=" …")
        lines.append(f"{r['stage']:<13}{str(r['status'])[:25]:<26}{t:>6}  {r['verdict'] or '-':<8}{budget}")
        lines += textwrap.wrap(headline(r), WIDTH, initial_indent="    ", subsequent_indent="    ",
                               max_lines=2, placeholder=" …")
    fails = [r["stage"] for r in results if r["verdict"] == "FAIL"]
    lines.append("-" * WIDTH)
    lines.append(f"{len(results) - len(fails)} of {len(results)} stages without FAIL" +
                 (f"; FAIL: {', '.join(fails)}" if fails else ""))
    return "\n".join(lines)


def details(results: list[dict[str, Any]]) -> str:
    """Every figure and note of every stage."""
    out = []
    for r in results:
        out.append(f"\n[{r['stage']}] status {r['status']}, verdict {r['verdict'] or '-'}, budget: {r.get('budget') or '-'}")
        for k, v in r.get("figures", {}).items():
            out.append(f"  {k}: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")
        for n in r.get("notes", []):
            out.append(f"  note: {n}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """Print and write the summary of `argv[0]` (OUT); the stages listed in `argv[1:]`, default all."""
    out = Path(argv[0])
    stages = argv[1:] or list(STAGES)
    results = [load(out, s) for s in stages]
    head = out / "results" / "header.txt"
    text = table(results)
    header = head.read_text() if head.exists() else ""
    (out / "summary.txt").write_text(header + text + "\n\n== details ==" + details(results) + "\n")
    (out / "summary.json").write_text(json.dumps(results, indent=1, default=str))
    print(text)
    return 1 if any(r["verdict"] == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["benchmarks/gpu_out"]))
