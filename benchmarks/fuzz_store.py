"""Fuzz the run-store reader: thousands of damaged copies of real recorded runs, each read through
every public reader API and the `inspector` CLI in a worker subprocess with a memory limit and a
timeout (harness: `tests/store/fuzz_lib.py`, damage: `tests/store/fuzz_mutations.py`).

Prints, per mutation family and in total, how many cases were tried and how many had an uncaught
exception, a crashed or hung worker, wrong rows, or an unreported loss; then, for each non-zero
cell, example cases to reproduce one at a time.

    .venv/bin/python benchmarks/fuzz_store.py --cases 10000 --seed 0 --workers 2
    .venv/bin/python benchmarks/fuzz_store.py --only truncate:17 --workdir /tmp/fuzz --keep
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.store import fuzz_lib  # noqa: E402
from tests.store.fuzz_mutations import FAMILIES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=10_000, help="number of cases (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the case list (default 0)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: one per core)")
    p.add_argument("--timeout", type=float, default=fuzz_lib.DEFAULT_TIMEOUT_S, help="seconds per case (default 20)")
    p.add_argument("--mem-gib", type=float, default=fuzz_lib.DEFAULT_MEM_BYTES / (1 << 30),
                   help="address-space limit of a worker in GiB (default 3)")
    p.add_argument("--families", help=f"comma-separated families (default all: {', '.join(FAMILIES)})")
    p.add_argument("--only", action="append", metavar="FAMILY:SEED", help="run just this case (repeatable)")
    p.add_argument("--workdir", type=Path, help="keep base runs, oracle and worker logs here (reused when present)")
    p.add_argument("--keep", action="store_true", help="keep each case's damaged copy under WORKDIR/slot-N/case")
    p.add_argument("--examples", type=int, default=3, help="example cases per non-zero cell (default 3)")
    p.add_argument("--json", type=Path, help="also write every case's result here")
    return p.parse_args(argv)


def _progress(total: int, start: float) -> Callable[[dict], None]:
    done = [0]

    def report(_result: dict) -> None:
        done[0] += 1
        if done[0] % 500 == 0 or done[0] == total:
            rate = (time.perf_counter() - start) / done[0] * 1000
            print(f"  {done[0]}/{total} cases, {rate:.0f} s per 1,000", file=sys.stderr, flush=True)
    return report


def _print_only(results: list[dict]) -> None:
    """Everything known about each case, for reproducing one."""
    for r in results:
        print(json.dumps(r, indent=1, ensure_ascii=False, default=repr))


def _memory_line(results: list[dict]) -> str:
    """What a worker needs on cases without findings: address space at their end, peak RSS in them."""
    healthy = [r["memory_mb"] for r in results if r.get("memory_mb") and not any(
        fuzz_lib.findings(r, c) for c in fuzz_lib.COLUMNS[1:])]
    if not healthy:
        return "worker memory: no case without findings"
    return (f"worker memory over {len(healthy)} cases without findings: address space up to "
            f"{max(m['Size'] for m in healthy)} MiB, peak RSS up to {max(m['HWM'] for m in healthy)} MiB "
            f"(limit {fuzz_lib.DEFAULT_MEM_BYTES >> 20} MiB by default)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fuzz-store-"))
    try:
        t0 = time.perf_counter()
        fuzz_lib.prepare(workdir)
        print(f"base runs and oracle ready in {time.perf_counter() - t0:.1f} s ({workdir})", file=sys.stderr)
        families = args.families.split(",") if args.families else None
        specs = args.only or fuzz_lib.make_specs(args.cases, args.seed, families)
        start = time.perf_counter()
        results = fuzz_lib.run_cases(specs, workdir, workers=min(args.workers, len(specs)), timeout=args.timeout,
                                     mem_bytes=int(args.mem_gib * (1 << 30)), keep=args.keep,
                                     on_result=_progress(len(specs), start))
        elapsed = time.perf_counter() - start
        if args.json:
            args.json.write_text(json.dumps(results, default=repr, ensure_ascii=False))
        if args.only:
            _print_only(results)
        print(fuzz_lib.format_report(results, args.examples))
        if fuzz_lib.failures(fuzz_lib.tabulate(results)):
            print("\ndistinct reasons (cases, reason [mutation variant], a reproducer):")
            print(fuzz_lib.format_reasons(results))
        print(f"\n{len(results)} cases in {elapsed:.0f} s on {args.workers} worker(s): "
              f"{elapsed / max(1, len(results)) * 1000:.0f} s per 1,000 cases")
        print(_memory_line(results))
        return 1 if fuzz_lib.failures(fuzz_lib.tabulate(results)) else 0
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
