"""The experts probe's recorded step at DeepSeek-V3 size (issue 17): 58 routers × 256 experts, top-8.

A model of 58 routers (Hugging Face style: a `*Router` module returning logits, weights and ids) runs
`--tokens` tokens through every router each step, watched with the experts probe recording every
step. Timed: `Watch.step()`, the step end that counts every router's ids, packs the layer numbers into
one host copy and judges the previous load for hot and starved experts. Two ways in the same run,
interleaved: routers alike counted by one bincount and packed as one matrix (what the probe does),
against one router at a time (the per-router path the probe keeps for routers unlike each other).
Also printed: the forward with the router hooks against without, for scale.

    .venv/bin/python benchmarks/experts_record_bench.py [--layers 58 --experts 256 --tokens 4096 --steps 30]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import inspector  # noqa: E402
from inspector.probes.experts import load, probe  # noqa: E402


class TopKRouter(nn.Module):
    """A router as Hugging Face MoE models have it: (logits, top-k weights, top-k ids)."""

    def __init__(self, hidden: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.num_experts, self.top_k = n_experts, top_k
        self.weight = nn.Parameter(torch.randn(n_experts, hidden) / hidden ** 0.5)

    def forward(self, x_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits_NE = x_ND @ self.weight.t()
        weights_NK, ids_NK = logits_NE.softmax(-1).topk(self.top_k, dim=-1)
        return logits_NE, weights_NK, ids_NK


class Routers(nn.Module):
    """`layers` routers, each fed the same hidden states (only the routing is of interest here)."""

    def __init__(self, layers: int, hidden: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TopKRouter(hidden, n_experts, top_k) for _ in range(layers))

    def forward(self, x_ND: torch.Tensor) -> torch.Tensor:
        for router in self.layers:
            x_ND = x_ND + 0.0 * router(x_ND)[0][:, :1]
        return x_ND


def one_at_a_time() -> contextlib.AbstractContextManager:
    """The probe with routers counted and packed one by one."""
    def count_each(items: list) -> None:
        for info, acc in items:
            load._count_ids(info, acc)
    patches = contextlib.ExitStack()
    patches.enter_context(mock.patch.object(probe, "_count_all", count_each))
    patches.enter_context(mock.patch.object(load, "_pack_rows", lambda group, dev: None))
    return patches


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the step-end times and their ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=58)
    p.add_argument("--experts", type=int, default=256)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    model = Routers(a.layers, a.hidden, a.experts, a.top_k).eval()
    x_ND = torch.randn(a.tokens, a.hidden)
    times: dict[str, list[float]] = {"together": [], "one at a time": []}
    forward: dict[str, list[float]] = {"unwatched": [], "watched": []}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for _ in range(2):
            model(x_ND)
        for _ in range(a.steps):
            t0 = time.perf_counter()
            model(x_ND)
            forward["unwatched"].append(time.perf_counter() - t0)
        watch = inspector.watch(model, Path(tmp) / "run", probes=["experts"], every={"experts": 1}, hang_after_s=None)
        found = len(watch.probes["experts"].routers)
        for i in range(2 * a.steps + 2):
            variant = "together" if i % 2 == 0 else "one at a time"
            with (one_at_a_time() if variant == "one at a time" else contextlib.nullcontext()):
                t0 = time.perf_counter()
                model(x_ND)
                t1 = time.perf_counter()
                watch.step()
                t2 = time.perf_counter()
            if i >= 2:
                times[variant].append(t2 - t1)
                forward["watched"].append(t1 - t0)
        watch.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{found} routers × {a.experts} experts, top-{a.top_k}, {a.tokens} tokens a step, "
          f"{a.steps} steps each way, interleaved; torch threads {torch.get_num_threads()}")
    print(f"  forward: {statistics.median(forward['unwatched']) * 1e3:.1f} ms unwatched, "
          f"{statistics.median(forward['watched']) * 1e3:.1f} ms with the router hooks")
    for k, v in med.items():
        print(f"  recorded step end, routers {k:<14} {v * 1e3:7.2f} ms")
    print(f"  one at a time / together = {med['one at a time'] / med['together']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
