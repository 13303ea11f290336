"""The Hugging Face zoo report: does `inspector.watch` change what any architecture computes?

    .venv/bin/python benchmarks/hf_zoo.py                  # every architecture of the installed transformers
    .venv/bin/python benchmarks/hf_zoo.py llama gpt2 t5    # some (model types, or labels of variants)
    .venv/bin/python benchmarks/hf_zoo.py --csv zoo.csv    # the table as CSV too

For each model type with a base model class, a tiny random-init model (width 64, 2 layers, 4 heads;
tests/hf_zoo_configs.py) runs one forward of a few tokens (or a small image / clip) per attention
implementation (sdpa, eager) in fp32 and under bf16 autocast: unwatched, watched with every
model probe sampling every step, and unwatched again. The table lists every architecture: "same"
(bit-identical outputs), "DIFFERS" / "ERROR" (a defect), or "skipped" with the reason it could not
be run here, then the time the whole zoo took and, as a ratio, the watched forwards against the
unwatched ones. Exit status 1 when any architecture differs or errs.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.hf_zoo_configs import ZooResult, default_workers, run_zoo, zoo_types  # noqa: E402


def run(labels: list[str], workers: int) -> list[tuple[ZooResult, float]]:
    """Each selected architecture's result and the seconds it took, in zoo order."""
    entries = [e for e in zoo_types() if not labels or e.label in labels or e.model_type in labels]
    with tempfile.TemporaryDirectory() as tmp:
        done = run_zoo(entries, Path(tmp), workers)
    return [done[e.label] for e in entries]


def table(results: list[tuple[ZooResult, float]]) -> Table:
    """One row per architecture."""
    t = Table(title="watch() on the Hugging Face zoo (bit-identical outputs watched vs unwatched)")
    for col in ("architecture", "status", "ran / reason", "maps", "s"):
        t.add_column(col, overflow="fold")
    style = {"same": "green", "skipped": "dim", "differs": "bold red", "error": "bold red"}
    for r, secs in results:
        status = r.status if r.status in ("same", "skipped") else r.status.upper()
        detail = escape(r.reason if r.reason else " ".join(r.impls))
        t.add_row(escape(r.label), f"[{style[r.status]}]{status}[/]", detail, str(r.maps), f"{secs:.2f}")
    return t


def main() -> int:
    """Print the table and the totals; 1 when an architecture differs or errs."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("labels", nargs="*", help="model types or variant labels (default: all)")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="worker processes, one torch thread each (default: as the test, up to 2)")
    args = p.parse_args()
    start = time.perf_counter()
    results = run(args.labels, args.workers)
    total = time.perf_counter() - start
    console = Console(width=200)
    console.print(table(results))
    counts = Counter(r.status for r, _ in results)
    skipped = Counter(r.reason.split(":")[0] for r, _ in results if r.status == "skipped")
    console.print(f"{len(results)} architectures in {total:.0f} s: " +
                  ", ".join(f"{n} {s}" for s, n in counts.most_common()))
    ran = [r for r, _ in results if r.status != "skipped"]
    unwatched, watched = sum(r.unwatched_s for r in ran), sum(r.watched_s for r in ran)
    if unwatched:
        console.print(f"forwards of the {len(ran)} run: watched / unwatched = {watched / unwatched:.2f}x "
                      f"({watched:.1f} s / {unwatched:.1f} s; every probe sampling every step)")
    console.print("skipped because: " + "; ".join(f"{n}× {why}" for why, n in skipped.most_common()))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["architecture", "status", "reason", "implementations", "maps", "seconds"])
            for r, secs in results:
                writer.writerow([r.label, r.status, r.reason, " ".join(r.impls), r.maps, f"{secs:.3f}"])
    return 1 if counts["differs"] or counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
