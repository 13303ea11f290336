"""A synthetic run with every record kind, written through the real Recorder (numpy, no torch).

UI and view tests use it: the content is known, so a page or screen can be checked against what
was written. `python -m tests.synthetic_run DIR --steps N --ranks R --sleep S` writes one from a
separate process (a live run for the "updates while open" tests).
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inspector.store.recorder import Recorder

LAYERS, HEADS, SEQ, EXPERTS, BINS = 2, 4, 16, 8, 32
BLOCKS = [f"layers.{i}" for i in range(LAYERS)]
PARAMS = [f"layers.{i}.{p}" for i in range(LAYERS) for p in ("attn.wq.weight", "ffn.w1.weight")]


@dataclass
class SyntheticSpec:
    """What to write: steps, ranks, sampling periods, faults."""

    steps: int = 60
    ranks: int = 1
    attention_every: int = 10
    hist_every: int = 10
    expert_every: int = 5
    slow_rank: int | None = None           # this rank's step time is 3x the others'
    spike_step: int | None = 40            # loss jumps here and an anomaly is recorded
    with_attention: bool = True
    with_experts: bool = True
    close: bool = True
    seed: int = 0
    sleep: float = 0.0                     # seconds between steps (a live run)


@dataclass
class Written:
    """What was written, for tests to compare with what the UIs show."""

    loss: dict[int, np.ndarray] = field(default_factory=dict)          # rank -> loss per step
    attention: dict[int, np.ndarray] = field(default_factory=dict)     # step -> [layers, heads, SEQ, SEQ]
    expert_counts: dict[int, np.ndarray] = field(default_factory=dict)  # step -> [moe layers, EXPERTS], rank 0
    expert_totals: dict[int, np.ndarray] = field(default_factory=dict)  # step -> the same summed over ranks
    step_ms: dict[int, np.ndarray] = field(default_factory=dict)        # rank -> total ms per step


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def write_rank(path: Path, spec: SyntheticSpec, rank: int, written: Written) -> None:
    """Write one rank of the synthetic run."""
    rng = np.random.default_rng(spec.seed + rank)
    steps = np.arange(spec.steps)
    loss = 5.0 * np.exp(-steps / 30) + 1.5 + 0.05 * rng.standard_normal(spec.steps)
    if spec.spike_step is not None and spec.spike_step < spec.steps:
        loss[spec.spike_step] += 4.0
    base_ms = 30.0 * (3.0 if rank == spec.slow_rank else 1.0)
    totals = np.empty(spec.steps)
    written.loss[rank] = loss
    causal = np.tril(np.ones((SEQ, SEQ), bool))
    with Recorder(path, rank=rank, world_size=spec.ranks, name="synthetic",
                  config={"synthetic": True, "layers": LAYERS}) as rec:
        for s in range(spec.steps):
            rec.step = s
            lr = 3e-3 * min(1.0, (s + 1) / 10)
            rec.scalars({"loss": float(loss[s]), "lr": lr, "grad_norm/global": 1.0 + 0.1 * np.sin(s / 5),
                         "tokens_per_s": 1000.0 / (base_ms / 30.0)}, step=s)
            fwd, bwd, opt = base_ms * 0.3, base_ms * 0.5, base_ms * 0.1
            total = fwd + bwd + opt + base_ms * 0.1 + rng.uniform(0, 1)
            totals[s] = total
            names = [*BLOCKS, *BLOCKS, "model", "model", "optimizer", "step", "step"]
            phases = ["forward"] * LAYERS + ["backward"] * LAYERS + ["forward", "backward", "optimizer",
                                                                     "other", "total"]
            ms = [fwd / LAYERS] * LAYERS + [bwd / LAYERS] * LAYERS + [fwd, bwd, opt, total - fwd - bwd - opt, total]
            rec.submit("timing", {"name": names, "phase": phases, "ms": ms}, len(names), step=s)
            if s % spec.hist_every == 0:
                norms = [0.1 * (i + 1) * (1 + s / spec.steps) for i in range(len(PARAMS))]
                rec.submit("grad_stats", {
                    "name": PARAMS, "norm": norms, "mean": [0.0] * len(PARAMS), "var": [n * n / 100 for n in norms],
                    "max_abs": [n / 3 for n in norms], "zero_frac": [0.0] * len(PARAMS),
                    "update_ratio": [1e-3 * (i + 1) for i in range(len(PARAMS))],
                    "var_over_steps": [1e-4] * len(PARAMS)}, len(PARAMS), step=s)
                counts = [np.histogram(rng.standard_normal(1000) * (1 + s / 100), bins=BINS, range=(-4, 4))[0]
                          for _ in BLOCKS]
                rec.histograms([f"activations/{b}" for b in BLOCKS], np.stack(counts), [-4.0] * LAYERS,
                               [4.0] * LAYERS, step=s)
                rec.submit("activation_stats", {
                    "name": BLOCKS, "mean": [0.0] * LAYERS, "std": [1.0 + s / 100] * LAYERS, "min": [-4.0] * LAYERS,
                    "max": [4.0] * LAYERS, "dead_frac": [0.01 * i for i in range(LAYERS)],
                    "saturated_frac": [0.0] * LAYERS, "nonfinite": [0] * LAYERS}, LAYERS, step=s)
            if spec.with_attention and s % spec.attention_every == 0:
                logits = rng.standard_normal((LAYERS, HEADS, SEQ, SEQ)) * (1 + s / 20)
                probs = _softmax(np.where(causal, logits, -np.inf)).astype(np.float16)
                if rank == 0:
                    written.attention[s] = probs
                for layer in range(LAYERS):
                    rec.attention_map(f"layers.{layer}.attn", probs[layer], layer=layer,
                                      heads=list(range(HEADS)), tokens=[f"t{i}" for i in range(SEQ)], step=s)
                p = probs.astype(np.float64)
                ent = -(p * np.log(np.where(p > 0, p, 1))).sum(-1).mean(-1)
                mx = p.max(-1).mean(-1)
                rec.submit("attention_stats", {
                    "name": [f"layers.{layer}.attn" for layer in range(LAYERS) for _ in range(HEADS)],
                    "layer": [layer for layer in range(LAYERS) for _ in range(HEADS)],
                    "head": list(range(HEADS)) * LAYERS, "entropy": ent.reshape(-1).tolist(),
                    "max_weight": mx.reshape(-1).tolist(),
                    "collapsed": [bool(layer == 1 and h == 0 and s >= spec.steps // 2)
                                  for layer in range(LAYERS) for h in range(HEADS)]}, LAYERS * HEADS, step=s)
            if spec.with_experts and s % spec.expert_every == 0:
                probs_e = _softmax(np.linspace(0, 2 * s / spec.steps, EXPERTS))
                counts = np.stack([rng.multinomial(512, probs_e) for _ in range(LAYERS)])
                if rank == 0:
                    written.expert_counts[s] = counts
                written.expert_totals[s] = written.expert_totals.get(s, 0) + counts
                mean = counts.mean(1)
                rec.submit("expert_load", {
                    "name": [f"layers.{i}.ffn.router" for i in range(LAYERS)], "layer": list(range(LAYERS)),
                    "counts": counts, "imbalance": (counts.max(1) / mean).tolist(),
                    "cv": (counts.std(1) / mean).tolist(), "router_entropy": [2.0] * LAYERS,
                    "dropped": [0] * LAYERS, "aux_loss": [0.01] * LAYERS,
                    "bias": [[0.01 * e for e in range(EXPERTS)]] * LAYERS}, LAYERS, step=s)
            if s % 5 == 0:
                rec.submit("system", {"device": "host", "cpu_percent": 50.0 + rank, "rss": 1e9}, 1, step=s)
                rec.submit("system", {"device": "cuda:0", "gpu_util": 90.0 - 20 * (rank == spec.slow_rank),
                                      "mem_used": 4e9, "mem_total": 8e9, "power_w": 200.0, "temp_c": 60.0,
                                      "sm_clock_mhz": 1500.0}, 1, step=s)
            if s == spec.spike_step:
                rec.anomaly("loss_spike", f"loss {loss[s]:.3f} is a spike (robust z > 6)", module="", step=s,
                            value=float(loss[s]))
            if spec.sleep:
                rec.flush()
                time.sleep(spec.sleep)
        written.step_ms[rank] = totals
    if not spec.close:
        _make_crashed(Path(path) / f"rank-{rank:05d}")


def _make_crashed(rank_dir: Path) -> None:
    """Make a rank look crashed an hour ago: no closed.json, files untouched since."""
    (rank_dir / "closed.json").unlink(missing_ok=True)
    old = time.time() - 3600
    for f in rank_dir.iterdir():
        os.utime(f, (old, old))


def write_synthetic_run(path: str | Path, spec: SyntheticSpec | None = None) -> Written:
    """Write every rank of a synthetic run into `path`; returns what was written."""
    spec = spec or SyntheticSpec()
    written = Written()
    for rank in range(spec.ranks):
        write_rank(Path(path), spec, rank, written)
    return written


def main() -> None:
    """Command-line entry: write a synthetic run (optionally slowly, as a live run)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--slow-rank", type=int, default=None)
    a = ap.parse_args()
    write_synthetic_run(a.path, SyntheticSpec(steps=a.steps, ranks=a.ranks, sleep=a.sleep, slow_rank=a.slow_rank))


if __name__ == "__main__":
    main()
