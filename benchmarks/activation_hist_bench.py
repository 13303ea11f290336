"""Cost of the activation histogram row whose range follows the data, against the range fixed at warm-up.

Both are timed in the same process, interleaved round by round on the same tensors, so a busy
machine slows both alike; the figure to read is the ratio of medians (follow / fixed). The baseline
`fixed_range_row` is the steady-state path of `hist_math.output_row` as of commit 5fdc757 (range
as host floats fixed from the first sample, under/overflow counted), kept here verbatim in substance.

    .venv/bin/python benchmarks/activation_hist_bench.py [--device cuda] [--rounds 15]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from inspector.probes.hist_math import BINS, OUTLIER_STD, DEAD_EPS, accumulate_dtype, output_row


def fixed_range_row(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """The baseline: one row over a fixed host range [lo, hi] (commit 5fdc757's steady state)."""
    xf = x if x.dtype == torch.float32 else x.float()
    n = xf.numel()
    xn = torch.sub(xf, xf).add_(xf)
    fill = torch.nan_to_num(xn, nan=math.inf, posinf=math.inf, neginf=-math.inf)
    mn = fill.amin()
    torch.nan_to_num(xn, nan=-math.inf, posinf=math.inf, neginf=-math.inf, out=fill)
    mx = fill.amax()
    del fill
    under, over = (xn < lo).sum(), (xn > hi).sum()
    if xf.device.type == "cpu":
        span = float(np.float32(hi) - np.float32(lo))
        pos = xn.clamp(lo, hi).sub_(lo).mul_(BINS).div_(span)
        pos = pos.floor_().clamp_max_(BINS - 1).nan_to_num_(BINS)
        binned = torch.bincount(pos.reshape(-1).to(torch.int32), minlength=BINS + 1)
        nonfinite = binned[BINS]
        counts = binned[:BINS].clone()
        counts[0] -= under
        counts[BINS - 1] -= over
    else:
        counts = torch.histc(xn, BINS, lo, hi)
        nonfinite = torch.isnan(xn).sum()
    n_fin = (n - nonfinite).clamp(min=1).float()
    acc = accumulate_dtype(xf.device)
    absmax_D = xn.reshape(-1, xf.shape[-1]).abs().amax(dim=0)
    dead = (absmax_D <= DEAD_EPS).float().mean()
    mean = torch.nansum(xn) / n_fin
    dev = xn.sub_(mean).nan_to_num_(0.0, math.inf, -math.inf)
    std = torch.linalg.vector_norm(dev) / n_fin.sqrt()
    saturated = (dev.abs_() > OUTLIER_STD * std).sum() / n_fin
    lohi = torch.tensor([lo, hi], dtype=acc, device=xf.device)
    return torch.cat([counts.to(acc), torch.stack([under, over, nonfinite]).to(acc), lohi,
                      torch.stack([mean, std, mn, mx]).to(acc), torch.stack([dead, saturated]).to(acc)])


def _time(fn, device: torch.device, reps: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    """Print per-shape medians and the follow/fixed ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator(device=device).manual_seed(0)
    shapes = [(8, 128, 256), (8, 512, 1024)]
    print(f"device {device}, {args.rounds} rounds; times are medians per module output")
    ratios = []
    for shape in shapes:
        x = torch.randn(shape, generator=gen, device=device)
        lo, hi = float(x.min()) * 1.1, float(x.max()) * 1.1
        state = {"lohi": output_row(x, None, None)[1]}
        n = math.prod(shape)
        reps = max(1, int(2e7 // n))

        def follow() -> None:
            _, state["lohi"] = output_row(x, state["lohi"], None)

        def fixed() -> None:
            fixed_range_row(x, lo, hi)

        follow(), fixed()
        t_follow, t_fixed = [], []
        for _ in range(args.rounds):
            t_fixed.append(_time(fixed, device, reps))
            t_follow.append(_time(follow, device, reps))
        mf, mx = statistics.median(t_follow), statistics.median(t_fixed)
        ratios.append(mf / mx)
        print(f"{str(shape):>16} {n:>9,} values: fixed {mx * 1e3:8.3f} ms  follow {mf * 1e3:8.3f} ms  "
              f"ratio follow/fixed {mf / mx:.3f}")
    print(f"ratio follow/fixed, geometric mean over shapes: {math.exp(statistics.fmean(map(math.log, ratios))):.3f}")


if __name__ == "__main__":
    main()
