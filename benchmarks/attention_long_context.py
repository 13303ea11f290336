"""Long-context attention statistics (issue 17): the tiled pass against the T×T path, time and peak memory.

For each sequence length, one causal attention of `--heads` heads of dimension `--dim` on CPU:
- `tiled`: `tiled_attention` (what the probe runs above a small map): exact statistics over every
  query row, a pooled map of at most `--map`², the last row in full;
- `T×T`: the eager computation a full map needs, `softmax(q·kᵀ·scale + causal mask)` whole, plus
  the same per-head statistics from it (skipped where its scores alone would exceed `--max-gib`);
- `strided`: what the probe did before: every n-th query row, at most `--map` of them (statistics
  are then estimates over those rows).
Each runs in a fresh process (spawned), so the peak resident memory it adds over the process after
setup (`ru_maxrss` − RSS before the call) is its own. Printed: seconds, extra peak MiB, and the ratios
tiled / T×T; for `strided`, how far its entropy estimate is from the exact one.

    python benchmarks/attention_long_context.py --lengths 8192,32768
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _one(method: str, T: int, heads: int, dim: int, map_size: int, out: "mp.Queue") -> None:
    import torch

    from inspector.probes.attention.stats import Visibility, layer_attention
    from inspector.probes.attention.tiled import tiled_attention

    torch.manual_seed(0)
    q, k = torch.randn(heads, T, dim), torch.randn(heads, T, dim)
    scale = 1 / math.sqrt(dim)
    vis = Visibility(causal=True)
    before = _rss_mib()
    t0 = time.perf_counter()
    if method == "tiled":
        res = tiled_attention(q, k, scale, vis, list(range(heads)), map_size, [-1])
        entropy = res.stats[:, 0].double().mean().item()
    elif method == "T×T":
        probs, stats, _ = layer_attention(q, k, scale, vis, list(range(heads)), max_rows=T, budget=heads * T * T)
        entropy = stats[:, 0].double().mean().item()
    else:
        probs, stats, _ = layer_attention(q, k, scale, vis, list(range(heads)), max_rows=map_size)
        entropy = stats[:, 0].double().mean().item()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put((seconds, max(peak - before, 0.0), entropy))


def measure(method: str, T: int, heads: int, dim: int, map_size: int) -> tuple[float, float, float]:
    """(seconds, extra peak MiB, mean entropy) of one method in a fresh process."""
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_one, args=(method, T, heads, dim, map_size, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"{method} at T={T} exited with {p.exitcode}")
    return q.get()


def main(argv: list[str] | None = None) -> int:
    """Print the table; 0 when every tiled run finished."""
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--lengths", default="2048,8192,32768")
    a.add_argument("--heads", type=int, default=2)
    a.add_argument("--dim", type=int, default=16)
    a.add_argument("--map", type=int, default=128)
    a.add_argument("--max-gib", type=float, default=6.0, help="skip T×T where its scores alone exceed this")
    args = a.parse_args(argv)
    print(f"causal attention, {args.heads} heads × dim {args.dim}, CPU, map ≤ {args.map}²")
    print(f"{'T':>7} {'method':>8} {'seconds':>9} {'extra peak MiB':>15} {'mean entropy':>13}")
    for T in (int(x) for x in args.lengths.split(",")):
        rows = {}
        for method in ("tiled", "T×T", "strided"):
            scores_gib = args.heads * T * T * 4 / 2**30
            if method == "T×T" and scores_gib > args.max_gib:
                print(f"{T:>7} {method:>8}   skipped: its scores alone take {scores_gib:.1f} GiB "
                      f"(probabilities as much again)")
                continue
            rows[method] = measure(method, T, args.heads, args.dim, args.map)
            s, mib, ent = rows[method]
            print(f"{T:>7} {method:>8} {s:9.2f} {mib:15.1f} {ent:13.4f}")
        if "T×T" in rows:
            (ts, tm, te), (fs, fm, fe) = rows["tiled"], rows["T×T"]
            print(f"{T:>7}    tiled / T×T: time {ts / fs:.2f}×, extra peak memory {tm / max(fm, 1e-9):.3f}×, "
                  f"entropy differs by {abs(te - fe):.1e}")
        if "strided" in rows:
            print(f"{T:>7}    strided rows' entropy is off the exact one by {abs(rows['strided'][2] - rows['tiled'][2]):.3f} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
