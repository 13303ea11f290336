"""Instructions the serving thread executes per decode iteration, watched against unwatched (issue 16),
counted by valgrind's callgrind: a figure no machine load moves, beside `inference_overhead.py`'s
tokens/s, which moves ±1 % on a shared 2-core machine.

Each variant serves the same batch (`tiny`, batch 8, prompt 64) in its own process under
`valgrind --tool=callgrind`; only the calls inside the timed decode loop are counted (the loop runs
inside `functools.reduce`, and callgrind collects only within that C function: imports, model
set-up and the watch's start are left out). The three variants (none, records only, default) run at
once; on 2 cores all three take about 9 minutes (valgrind runs Python ~50× slower).

Read the figure with the other one: the Inspector's Python runs at a lower instructions-per-cycle
than the model's kernels, so the time ratio is larger than the instruction ratio (measured: +2.2 %
instructions, +6 % serving-thread CPU time).

    python benchmarks/inference_instructions.py --iterations 64
"""
from __future__ import annotations

import argparse
import functools
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLLECTED = re.compile(r"Collected : (\d+)")
VARIANTS = ("none", "records", "default")


def serve(variant: str, iterations: int) -> None:
    """The counted workload: decode `iterations` scheduler iterations of one batch (in this process)."""
    sys.path.insert(0, str(ROOT))
    import torch

    import inspector
    from inspector_engine.config import get_config
    from inspector_engine.inference import BatchScheduler, SamplingParams
    from inspector_engine.model import Transformer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = get_config("tiny")
    model = Transformer(cfg).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, cfg.vocab_size, (64,), generator=g).tolist() for _ in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        watch = None if variant == "none" else inspector.watch(
            model, Path(tmp) / "run", mode="inference", hang_after_s=None,
            probes="default" if variant == "default" else [])

        def start(new: int) -> tuple[BatchScheduler, object]:
            sched = BatchScheduler(model, max_batch_size=8, max_batch_tokens=8 * (64 + new + 8))
            driver = watch.observe(sched) if watch is not None else None
            for p in prompts:
                sched.submit(p, new, SamplingParams(temperature=0.0))
            sched.step()                                   # admission: every prefill
            return sched, driver

        sched, driver = start(40)                          # warm-up, not counted
        while sched.has_work:
            sched.step()
        if driver is not None:
            driver.remove()
        sched, driver = start(iterations + 2)

        def decode(acc: int, _: int) -> int:
            for _ in range(iterations):
                sched.step()
            return acc

        functools.reduce(decode, [0], 0)                   # callgrind counts inside this call only
        while sched.has_work:
            sched.step()
        if watch is not None:
            watch.close()


def main(argv: list[str] | None = None) -> int:
    """Run every variant under callgrind and print instructions per iteration and the ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=64)
    p.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)   # the child process's role
    a = p.parse_args(argv)
    if a.serve:
        serve(a.serve, a.iterations)
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed (Debian: apt-get install valgrind); nothing measured", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        procs = {v: subprocess.Popen(
            [valgrind, "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=functools_reduce",
             f"--callgrind-out-file={Path(tmp) / v}.out", sys.executable, __file__, "--serve", v,
             "--iterations", str(a.iterations)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for v in VARIANTS}
        counts: dict[str, int] = {}
        for v, proc in procs.items():
            _, err = proc.communicate()
            found = COLLECTED.search(err)
            if proc.returncode != 0 or found is None:
                print(f"{v}: callgrind failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}", file=sys.stderr)
                return 1
            counts[v] = int(found.group(1))
    if counts["none"] == 0:
        print("callgrind counted nothing inside functools.reduce (a Python built without symbols?)", file=sys.stderr)
        return 1
    print(f"config tiny · batch 8 · prompt 64 · {a.iterations} decode iterations · instructions of the serving thread")
    for v in VARIANTS:
        print(f"  {v:<8} {counts[v] / a.iterations / 1e6:8.2f} M a decode iteration   "
              f"{v}/none {counts[v] / counts['none']:.4f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
