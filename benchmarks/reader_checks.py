"""What the reader's distrust costs: reading a run's tables through RunReader (every frame
checksummed, validated in full, checked against its kind and its header) against a bare decode of
the same frames (checksum + Arrow IPC read + concatenation, no checks), measured in the same run.

Usage: python benchmarks/reader_checks.py [--steps 3000] [--rounds 7]
Prints the best time of each and the ratio; frames are small (one step of 20 scalars or two
histograms), the worst case for a per-frame cost.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inspector.schema import kind_id  # noqa: E402
from inspector.store import open_run  # noqa: E402
from inspector.store.format import segment_name  # noqa: E402
from inspector.store.recorder import Recorder  # noqa: E402

KINDS = ("scalar", "histogram")


def record(run: Path, steps: int) -> None:
    """One frame per kind per step."""
    with Recorder(run, segment_bytes=1 << 20) as rec:
        for s in range(steps):
            rec.step = s
            rec.scalars({f"m{i}": float(s) for i in range(20)})
            rec.histograms(["a", "b"], np.ones((2, 32), np.int64), -1.0, 1.0)
            rec.flush()


def bare_read(run: Path) -> int:
    """The same frames without any check beyond the payload checksum."""
    reader = open_run(run)
    rows = 0
    for kind in KINDS:
        parts = []
        for ref in reader._ranks[0].by_kind[kind_id(kind)]:
            data = reader._pread(0, segment_name(ref.segment), ref.offset, ref.header.length)
            assert zlib.crc32(data) == ref.header.crc32
            parts.append(pa.ipc.open_stream(pa.py_buffer(data)).read_all())
        rows += pa.concat_tables(parts).num_rows
    reader.close()
    return rows


def checked_read(run: Path) -> int:
    """Through the public API."""
    reader = open_run(run)
    rows = sum(reader.read_table(kind).num_rows for kind in KINDS)
    reader.close()
    return rows


def main() -> None:
    """Interleaved rounds of both; best of each."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        record(run, a.steps)
        best = {"bare": float("inf"), "checked": float("inf")}
        for _ in range(a.rounds):
            for name, fn in (("bare", bare_read), ("checked", checked_read)):
                t0 = time.perf_counter()
                rows = fn(run)
                best[name] = min(best[name], time.perf_counter() - t0)
    frames = 2 * a.steps
    print(f"{frames:,} frames, {rows:,} rows: bare decode {best['bare'] * 1e3:.0f} ms, "
          f"RunReader with every check {best['checked'] * 1e3:.0f} ms "
          f"({best['checked'] / best['bare']:.2f}x, {(best['checked'] - best['bare']) / frames * 1e6:.0f} us a frame)")


if __name__ == "__main__":
    main()
