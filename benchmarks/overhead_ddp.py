"""Overhead of the watchdog + collective records (issue 15) on the engine under 2-rank DDP on CPU.

Launches itself with torchrun (2 ranks, gloo). Each rank holds one DDP copy of the engine model per
arm (same seed, same batches, AdamW); every step is forward + loss + backward (DDP all-reduces the
gradients) + an explicit `dist.all_reduce` of the loss (a trainer's logged mean, so the wrapped
`torch.distributed` path is exercised too) + optimizer step + the arm's `watch.step`. Arms,
interleaved: every round runs `--steps` steps of each arm in turn (order rotated per round); a
watched arm opens its `inspector.watch` at the start of its block and closes it at the end (outside
the timed steps), so its threads run only during its own blocks:

  none       no recording (the baseline)
  watch-off  `inspector.watch(probes="none", hang_after_s=None)`: the Recorder, no watchdog thread
             (the phase hooks and the collective tracker are still set up by the Watch)
  watchdog   `inspector.watch(probes="none")`: + the watchdog thread (heartbeat every 2 s) and the
             collective tracker with DDP's recording comm hook

Reported on rank 0 (the step time of synchronous DDP is the slowest rank's): median ms/step per
arm, `ratio` = median / median of `none`, `paired` = median over rounds of the round's median /
the same round's median of the reference; the budget is watchdog ≤ 1.01× none.

    .venv/bin/python benchmarks/overhead_ddp.py [--rounds 10] [--steps 20] [--config debug]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARMS = ("none", "watch-off", "watchdog")
BUDGET = 1.01


def rank_main(a: argparse.Namespace) -> None:
    """One rank: build the arms, run the interleaved rounds, print the table on rank 0."""
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    import inspector
    from inspector_engine.config import get_config
    from inspector_engine.model import Transformer

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    cfg = get_config(a.config)
    models, opts = {}, {}
    for arm in ARMS:
        torch.manual_seed(0)
        models[arm] = DistributedDataParallel(Transformer(cfg))
        opts[arm] = torch.optim.AdamW(models[arm].parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1 + rank)
    batches = [torch.randint(0, cfg.vocab_size, (a.batch_size, a.seq_len + 1), generator=gen) for _ in range(8)]
    work = Path(a.work)
    times: dict[str, list[list[float]]] = {arm: [] for arm in ARMS}

    def block(arm: str, n: int, round_i: int) -> list[float]:
        model, opt = models[arm], opts[arm]
        w = None
        if arm != "none":
            hang = None if arm == "watch-off" else 20.0
            w = inspector.watch(model, work / arm / f"round-{round_i}", probes="none", optimizer=opt,
                                hang_after_s=hang)
        out = []
        try:
            for i in range(n):
                tokens_BT = batches[i % len(batches)]
                t0 = time.perf_counter()
                logits_BTV = model(tokens_BT[:, :-1])
                loss = F.cross_entropy(logits_BTV.float().flatten(0, 1), tokens_BT[:, 1:].flatten())
                loss = loss + model.module.aux_loss().float()
                mean = loss.detach().clone()
                dist.all_reduce(mean)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if w is not None:
                    w.step(loss=mean)
                out.append(time.perf_counter() - t0)
        finally:
            if w is not None:
                w.close()
        return out

    for arm in ARMS:                                   # warm-up, untimed
        block(arm, a.warmup, -1)
    for r in range(a.rounds):
        order = ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]
        for arm in order:
            times[arm].append(block(arm, a.steps, r))
    dist.barrier()
    if rank == 0:
        med = {arm: float(np.median(np.concatenate(times[arm]))) * 1000 for arm in ARMS}

        def paired(arm: str, ref: str) -> float:
            return float(np.median([np.median(x) / np.median(y) for x, y in zip(times[arm], times[ref])]))

        print(f"engine config {a.config!r}, 2 ranks (gloo, CPU), {a.rounds} rounds × {a.steps} steps per arm, "
              f"batch {a.batch_size}×{a.seq_len}; rank 0's step times")
        print(f"{'arm':<11}{'median ms':>10}{'ratio':>8}{'paired':>8}{'vs watch-off':>14}")
        for arm in ARMS:
            print(f"{arm:<11}{med[arm]:>10.2f}{med[arm] / med['none']:>8.3f}{paired(arm, 'none'):>8.3f}"
                  f"{paired(arm, 'watch-off'):>14.3f}")
        ok = paired("watchdog", "none") <= BUDGET
        print(f"watchdog vs none (paired): {paired('watchdog', 'none'):.3f}× — budget {BUDGET}×: "
              f"{'PASS' if ok else 'FAIL'}", flush=True)
    dist.destroy_process_group()


def main() -> int:
    """Parse the options; run as a rank under torchrun, or launch torchrun on this file."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=20, help="timed steps per arm and round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--config", default="debug")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--work", default="")
    a = p.parse_args()
    if "LOCAL_RANK" in os.environ:
        rank_main(a)
        return 0
    work = a.work or tempfile.mkdtemp(prefix="overhead-ddp-")
    try:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", "29517",
               __file__, *sys.argv[1:], "--work", work]
        return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
