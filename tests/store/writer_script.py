"""A writer process for the store's fault and concurrency tests.

Usage: python writer_script.py RUN_DIR STEPS RATE [--maps] [--fsize-limit BYTES] [--rm-dir-at STEP]
Prints "step N" after each step is handed to the recorder and "flushed N" after each flush, so a
test can kill it at a known point. RATE is steps per second (0 = flat out).
"""
from __future__ import annotations

import argparse
import resource
import shutil
import signal
import sys
import time

import numpy as np

from inspector.store.recorder import Recorder


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("steps", type=int)
    p.add_argument("rate", type=float)
    p.add_argument("--maps", action="store_true")
    p.add_argument("--fsize-limit", type=int, default=0)
    p.add_argument("--rm-dir-at", type=int, default=-1)
    p.add_argument("--flush-every", type=int, default=1)
    p.add_argument("--segment-bytes", type=int, default=64 << 20)
    a = p.parse_args()
    if a.fsize_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (a.fsize_limit, a.fsize_limit))
    rec = Recorder(a.run_dir, name="writer-script", heartbeat_s=0.5, segment_bytes=a.segment_bytes)
    rng = np.random.default_rng(0)
    for step in range(a.steps):
        t0 = time.monotonic()
        rec.step = step
        rec.scalars({"loss": 1.0 / (step + 1), "step_echo": float(step)})
        rec.histogram("h", np.full(16, step, np.int64), 0.0, 1.0)
        if a.maps and step % 5 == 0:
            rec.attention_map("attn", rng.random((2, 8, 8)), layer=0)
        if step == a.rm_dir_at:
            shutil.rmtree(a.run_dir)
        print(f"step {step}", flush=True)
        if a.flush_every and step % a.flush_every == 0 and rec.flush():
            print(f"flushed {step}", flush=True)
        if a.rate > 0:
            time.sleep(max(0.0, 1.0 / a.rate - (time.monotonic() - t0)))
    rec.close()
    print(f"closed dropped={rec.dropped} failed={rec.failed is not None}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
