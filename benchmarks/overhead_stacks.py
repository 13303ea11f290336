"""Probe overhead on the stacks real jobs use (issue 14): ``torch.compile``, and 2-rank FSDP2 (CPU, gloo).

Why a model of its own: ``benchmarks/overhead.py --compile`` times the engine's model, which dynamo
already splits into many graphs without any probe (rope's ``int(positions.max())``, the MoE
dispatch's ``bincount(...).tolist()`` and its per-expert token counts), so the unwatched baseline
is not a compiled model in the sense a user means, and a break the probes added would hide among
the engine's own. Removing those breaks from the engine means a dense MoE dispatch, which changes
the order of the sums (not bit-identical) and the cost: more than a small change. This file times a
model that compiles to **one graph with no break**: token embedding, pre-norm blocks of causal
``nn.MultiheadAttention`` + a top-k MoE layer (``gate`` beside ``experts``; every expert runs on
every token and the chosen ones are gathered, so no shape depends on data: the layout of
``TinyAttentionMoE`` in tests/test_compile_breaks.py, at a realistic size), final norm, head.
Default size: vocabulary 256, dim 256, 4 layers, 4 heads, 4 experts (top 2) of hidden width 256,
batch 8 x seq 128 (3.5M parameters). Every default probe applies to it (timing, attention,
activations, gradients, experts, anomalies, system).

A step: forward, cross-entropy, backward, ``clip_grad_norm_(1.0)``, AdamW step, the watched arm's
``w.step(loss=loss.detach())``, ``zero_grad(set_to_none=True)``; timed with ``perf_counter``.
Every arm has its own model (same seed, same batches) and optimizer; a watched arm is watched
(``probes="default"``, default sampling) for the whole run, so sampled steps (gradients every
50th, attention/activations every 100th, experts every 10th step...) fall where they would for a
user. Arms run interleaved: every round runs ``--steps-per-round`` steps of each arm in turn, the
order rotated each round; after each block the watched arm's recorder is flushed (untimed) and the
harness sleeps ``--settle`` seconds, so one arm's background writes are not charged to the next.

``--stack compile`` (one process): four arms: ``eager`` and ``eager+probes`` (context), ``compiled``
and ``compiled+probes`` (``watch`` attached before ``torch.compile(model)``). Dynamo's counters
(``torch._dynamo.utils.counters``: unique graphs, graph breaks, recompiles) are taken three times:
for each compiled arm alone (``torch._dynamo.reset()`` before its warm-up, as a fresh process would
see it: the figures the check compares), then for one more step of each with both models in the
process ("shared": the reset dropped the first arm's code, so it compiles again; any guard failure
between the two models would show here as a recompile), and over the timed rounds (0 new graphs,
breaks and recompiles expected). The report checks that the watched arm adds no graph, break or
recompile to the unwatched one's counts (exit status 1 if it does).

``--stack fsdp2`` (two processes started here by ``torch.multiprocessing.spawn``, gloo, one thread
each; ``join`` waits for both, and a rank that fails takes the other down): each rank builds two
identical models, ``fully_shard`` on every block and then the root, and alternates blocks of
``unwatched`` and ``watched`` steps (a barrier, untimed, between blocks keeps the ranks in step).
Every ``torch.distributed`` collective is counted per step and arm by a plain counting wrapper
(both arms pay it alike); the difference is what the probes add, shown by step. Rank 0 prints
the report with both ranks' times (gathered at the end).

Figures are ratios against the unwatched arm of the same stack in the same run: ``ratio`` =
median step time / unwatched median (the metric of overhead.py), ``mean x`` = mean / unwatched mean
(charges the sampled steps), ``paired`` = median over rounds of the per-round median ratio (cancels
drifts of a shared machine's load). Budget (issue 14): default probes <= 1.05x, PASS/FAIL on both
``ratio`` and ``mean x``. The final losses of watched and unwatched arms are printed: recording
must not change what the model computes.

Usage::

    python benchmarks/overhead_stacks.py --stack compile                 # ~25 rounds, a few minutes
    python benchmarks/overhead_stacks.py --stack fsdp2
    python benchmarks/overhead_stacks.py --stack compile --quick --backend aot_eager   # smoke run
    python benchmarks/overhead_stacks.py --stack fsdp2 --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import socket
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

BUDGET = 1.05
CLIP = 1.0
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_single", "all_gather_object",
               "reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_single", "broadcast", "reduce", "gather",
               "scatter", "all_to_all", "all_to_all_single", "barrier")
"""``torch.distributed`` functions counted in the FSDP2 stack (FSDP2 itself calls ``all_gather_single``,
``reduce_scatter_single`` and ``all_reduce`` through the module attribute)."""


# --- the model: one graph, no break ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelSize:
    """The benchmark model's shape and the batch it trains on."""

    vocab: int = 256
    dim: int = 256
    layers: int = 4
    heads: int = 4
    experts: int = 4
    top_k: int = 2
    batch: int = 8
    seq: int = 128


QUICK_SIZE = ModelSize(vocab=64, dim=32, layers=2, heads=2, experts=4, top_k=2, batch=2, seq=16)


class MoE(nn.Module):
    """Top-k MoE: ``gate`` beside ``experts``; every expert runs on every token, the chosen are gathered."""

    def __init__(self, dim: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.n_experts, self.top_k = n_experts, top_k
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)) for _ in range(n_experts))

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """Weighted sum of each token's top-k experts (weights: the chosen softmax scores)."""
        weights_BTK, chosen_BTK = self.gate(x_BTD).softmax(-1).topk(self.top_k, -1)
        all_BTED = torch.stack([expert(x_BTD) for expert in self.experts], -2)
        index_BTKD = chosen_BTK.unsqueeze(-1).expand(*chosen_BTK.shape, x_BTD.shape[-1])
        return (torch.gather(all_BTED, -2, index_BTKD) * weights_BTK.unsqueeze(-1)).sum(-2)


class Block(nn.Module):
    """Pre-norm block: causal multi-head attention, then the MoE layer."""

    def __init__(self, size: ModelSize) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(size.dim)
        self.attn = nn.MultiheadAttention(size.dim, size.heads, batch_first=True)
        self.norm2 = nn.LayerNorm(size.dim)
        self.moe = MoE(size.dim, size.experts, size.top_k)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """``x + attn(norm(x))``, then ``+ moe(norm(.))``."""
        h_BTD = self.norm1(x_BTD)
        T = x_BTD.shape[1]
        future_TT = torch.ones(T, T, dtype=torch.bool, device=x_BTD.device).triu(1)
        x_BTD = x_BTD + self.attn(h_BTD, h_BTD, h_BTD, attn_mask=future_TT, need_weights=False)[0]
        return x_BTD + self.moe(self.norm2(x_BTD))


class AttentionMoE(nn.Module):
    """Embedding, ``layers`` blocks, final norm, head: compiles to one graph with no break."""

    def __init__(self, size: ModelSize) -> None:
        super().__init__()
        self.emb = nn.Embedding(size.vocab, size.dim)
        self.layers = nn.ModuleList(Block(size) for _ in range(size.layers))
        self.norm = nn.LayerNorm(size.dim)
        self.head = nn.Linear(size.dim, size.vocab)

    def forward(self, x_BT: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, vocab]``."""
        h_BTD = self.emb(x_BT)
        for layer in self.layers:
            h_BTD = layer(h_BTD)
        return self.head(self.norm(h_BTD))


def make_batches(size: ModelSize, n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` fixed (inputs, next-token targets) batches of random tokens."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        tokens_BT = torch.randint(0, size.vocab, (size.batch, size.seq + 1), generator=gen)
        out.append((tokens_BT[:, :-1].contiguous(), tokens_BT[:, 1:].contiguous()))
    return out


# --- arms and the interleaved rounds -------------------------------------------------------------

@dataclasses.dataclass
class Arm:
    """One model being trained: its callable (the model or its compiled wrapper), optimizer, optional watch."""

    name: str
    model: nn.Module
    run: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    watch: Any = None
    steps_done: int = 0
    times_s: list[float] = dataclasses.field(default_factory=list)
    round_medians_s: list[float] = dataclasses.field(default_factory=list)
    last_loss: float = math.nan
    dynamo: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    collectives: list[Counter[str]] = dataclasses.field(default_factory=list)  # per step done, FSDP2 only


def build_arm(name: str, size: ModelSize, seed: int, run_dir: Path | None,
              wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
              compile_kw: dict[str, Any] | None = None) -> Arm:
    """A fresh model (seed ``seed``) wrapped by ``wrap`` (e.g. FSDP2), AdamW, watched with the default
    probes when ``run_dir`` is given (before ``torch.compile`` when ``compile_kw`` is given)."""
    torch.manual_seed(seed)
    model = wrap(AttentionMoE(size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    watch = None
    if run_dir is not None:
        import inspector

        watch = inspector.watch(model, run_dir, probes="default", optimizer=optimizer, name=run_dir.name)
    run = torch.compile(model, **compile_kw) if compile_kw is not None else model
    return Arm(name, model, run, optimizer, watch)


def train_step(arm: Arm, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """One timed training step of ``arm``; seconds."""
    x_BT, y_BT = batch
    t0 = time.perf_counter()
    logits_BTV = arm.run(x_BT)
    loss = F.cross_entropy(logits_BTV.flatten(0, 1), y_BT.flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(arm.model.parameters(), CLIP)
    arm.optimizer.step()
    if arm.watch is not None:
        arm.watch.step(loss=loss.detach())
    arm.optimizer.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    arm.steps_done += 1
    arm.last_loss = float(loss.detach())
    return dt


def settle(arm: Arm) -> None:
    """Wait (untimed) until the watched arm's writer thread has written what is queued."""
    if arm.watch is not None:
        arm.watch.recorder.flush(timeout=60.0)


def run_rounds(arms: list[Arm], batches: list[tuple[torch.Tensor, torch.Tensor]], rounds: int, steps: int,
               pause_s: float, between: Callable[[], None] = lambda: None,
               each_step: Callable[[Arm], None] = lambda arm: None, say: Callable[[str], None] = print) -> None:
    """``rounds`` rounds of ``steps`` timed steps of every arm, the order rotated each round;
    ``between`` runs (untimed) before every block, ``each_step`` after every step."""
    t_start = time.perf_counter()
    for rnd in range(rounds):
        shift = rnd % len(arms)
        for arm in arms[shift:] + arms[:shift]:
            between()
            block = []
            for _ in range(steps):
                block.append(train_step(arm, batches[arm.steps_done % len(batches)]))
                each_step(arm)
            arm.times_s += block
            arm.round_medians_s.append(statistics.median(block))
            settle(arm)
            time.sleep(pause_s)
        if (rnd + 1) % max(1, rounds // 5) == 0 or rnd + 1 == rounds:
            spent = time.perf_counter() - t_start
            say(f"round {rnd + 1}/{rounds} ({spent:.0f} s, about {spent / (rnd + 1) * (rounds - rnd - 1):.0f} s to go)")


def ratios(times_s: list[float], rounds_s: list[float], base_times_s: list[float],
           base_rounds_s: list[float]) -> dict[str, float]:
    """Step times (and per-round medians) against a baseline's: median, mean and paired ratios."""
    return {"ratio": statistics.median(times_s) / statistics.median(base_times_s),
            "mean_ratio": statistics.fmean(times_s) / statistics.fmean(base_times_s),
            "paired_ratio": statistics.median(a / b for a, b in zip(rounds_s, base_rounds_s))}


def print_table(title: str, arms: list[Arm], bases: dict[str, Arm], budgeted: set[str],
                extra: Callable[[Arm], str] = lambda arm: "") -> list[dict[str, Any]]:
    """Print one line per arm (ratios against ``bases[arm.name]``, the budget on the ``budgeted``
    arms, ``extra(arm)`` at the end); returns the rows."""
    print(f"\n== {title} ==")
    print(f"{'arm':<18}{'steps':>6}{'median ms':>11}{'mean ms':>10}{'ratio':>9}{'mean x':>9}{'paired':>9}"
          f"{'budget':>9}{'':>6}  {'final loss':<11}")
    rows = []
    for arm in arms:
        row: dict[str, Any] = {"arm": arm.name, "steps": len(arm.times_s),
                               "median_ms": 1e3 * statistics.median(arm.times_s),
                               "mean_ms": 1e3 * statistics.fmean(arm.times_s), "final_loss": arm.last_loss}
        base = bases.get(arm.name)
        if base is not None and base is not arm:
            row.update(ratios(arm.times_s, arm.round_medians_s, base.times_s, base.round_medians_s),
                       baseline=base.name)
        if arm.name in budgeted and "ratio" in row:
            row["budget"] = BUDGET
            row["verdict"] = "PASS" if max(row["ratio"], row["mean_ratio"]) <= BUDGET else "FAIL"
        cols = "".join(f"{row[k]:>8.3f}x" if k in row else f"{'-':>9}" for k in ("ratio", "mean_ratio", "paired_ratio"))
        budget = f"<={BUDGET:.2f}x" if "budget" in row else "-"
        print(f"{arm.name:<18}{row['steps']:>6}{row['median_ms']:>11.2f}{row['mean_ms']:>10.2f}{cols}{budget:>9}"
              f"{row.get('verdict', ''):>6}  {arm.last_loss:<11.6f}{extra(arm)}")
        rows.append(row)
    return rows


# --- torch.compile -------------------------------------------------------------------------------

def dynamo_counts() -> dict[str, int]:
    """Dynamo's unique graphs, graph breaks and recompiles so far in this process."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]), "breaks": int(sum(counters["graph_break"].values())),
            "recompiles": int(sum(counters["recompiles"].values()))}


def counts_since(before: dict[str, int]) -> dict[str, int]:
    """Dynamo's counts added since ``before``."""
    now = dynamo_counts()
    return {k: now[k] - before[k] for k in now}


def break_reasons() -> Counter[str]:
    """Graph-break reasons counted so far in this process."""
    from torch._dynamo.utils import counters

    return Counter({str(k)[:160]: int(v) for k, v in counters["graph_break"].items()})


def compile_stack(args: argparse.Namespace, size: ModelSize, work: Path) -> dict[str, Any]:
    """The compile stack: eager and compiled arms, unwatched and watched, interleaved in this process."""
    torch.set_num_threads(args.threads)
    batches = make_batches(size, args.batches, args.seed)
    compile_kw = {"backend": args.backend}
    arms = [build_arm("eager", size, args.seed, None),
            build_arm("eager+probes", size, args.seed, work / "eager-probes"),
            build_arm("compiled", size, args.seed, None, compile_kw=compile_kw),
            build_arm("compiled+probes", size, args.seed, work / "compiled-probes", compile_kw=compile_kw)]
    try:
        return measure_compiled(args, arms, batches)
    finally:
        for arm in arms:
            if arm.watch is not None:
                arm.watch.close()


def measure_compiled(args: argparse.Namespace, arms: list[Arm],
                     batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Count dynamo's work per compiled arm, time every arm interleaved, print the report."""
    import torch._dynamo

    compiled = [a for a in arms if a.name.startswith("compiled")]
    t0 = time.perf_counter()
    for arm in compiled:  # each compiled arm alone, as in a fresh process
        torch._dynamo.reset()
        before, reasons = dynamo_counts(), break_reasons()
        for _ in range(args.warmup):
            train_step(arm, batches[arm.steps_done % len(batches)])
        arm.dynamo["alone"] = counts_since(before)
        arm.dynamo["alone_reasons"] = dict(break_reasons() - reasons)
    print(f"compiled each arm alone: {time.perf_counter() - t0:.0f} s", flush=True)
    for arm in compiled:  # both compiled models now share the process's code caches
        before = dynamo_counts()
        train_step(arm, batches[arm.steps_done % len(batches)])
        arm.dynamo["shared"] = counts_since(before)
    for arm in arms:
        while arm.steps_done < args.warmup + 1:
            train_step(arm, batches[arm.steps_done % len(batches)])
        settle(arm)
    before = dynamo_counts()
    run_rounds(arms, batches, args.rounds, args.steps_per_round, args.settle)
    rounds_counts = counts_since(before)
    bases = {"eager+probes": arms[0], "compiled+probes": arms[2], "compiled": arms[0]}

    def dyn(arm: Arm) -> str:
        if not arm.dynamo:
            return ""
        a, s = arm.dynamo["alone"], arm.dynamo["shared"]
        return (f"  graphs/breaks/recompiles: alone {a['graphs']}/{a['breaks']}/{a['recompiles']},"
                f" shared {s['graphs']}/{s['breaks']}/{s['recompiles']}")

    rows = print_table(f"torch.compile (backend {args.backend}): ratios against the same stack unwatched"
                       " (compiled vs eager for context)", arms, bases, {"compiled+probes", "eager+probes"}, dyn)
    plain, watched = compiled
    added = {k: watched.dynamo["alone"][k] - plain.dynamo["alone"][k] for k in ("graphs", "breaks", "recompiles")}
    print(f"dynamo over the timed rounds (both compiled arms): graphs {rounds_counts['graphs']}, breaks"
          f" {rounds_counts['breaks']}, recompiles {rounds_counts['recompiles']}")
    zero = {"graphs": 0, "breaks": 0, "recompiles": 0}
    ok = added == zero and rounds_counts == zero
    if watched.dynamo["alone_reasons"]:
        print(f"graph-break reasons (watched, alone): {watched.dynamo['alone_reasons']}")
    print(f"CHECK watched adds 0 graph breaks, graphs and recompiles: added {added}: {'OK' if ok else 'FAILED'}")
    if watched.watch is not None:
        print(f"  compiled+probes: probes {sorted(watched.watch.probes)}, records written"
              f" {watched.watch.recorder.records_written}, dropped {watched.watch.recorder.dropped}")
    return {"stack": "compile", "rows": rows, "dynamo": {a.name: a.dynamo for a in compiled},
            "dynamo_rounds": rounds_counts, "added": added, "check_ok": ok}


# --- FSDP2, 2 ranks ------------------------------------------------------------------------------

class CollectiveCounter:
    """Counts calls of ``torch.distributed`` collectives, charged to the arm whose step is running."""

    def __init__(self) -> None:
        self.current: Counter[str] = Counter()
        self._originals: dict[str, Any] = {}

    def install(self) -> None:
        """Wrap every collective of ``COLLECTIVES`` that this torch has."""
        import torch.distributed as dist

        for name in COLLECTIVES:
            original = getattr(dist, name, None)
            if original is None:
                continue
            self._originals[name] = original

            def counted(*a: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
                self.current[_name] += 1
                return _original(*a, **kw)

            setattr(dist, name, counted)

    def uninstall(self) -> None:
        """Put the originals back."""
        import torch.distributed as dist

        for name, original in self._originals.items():
            setattr(dist, name, original)
        self._originals.clear()

    def take(self) -> Counter[str]:
        """The calls since the last ``take``."""
        out, self.current = self.current, Counter()
        return out


def fsdp2_rank(rank: int, world: int, rendezvous: str, args: argparse.Namespace, size: ModelSize,
               work: str) -> None:
    """One FSDP2 rank: an unwatched and a watched copy of the model, alternated block by block."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=rendezvous)
    arms: list[Arm] = []
    census = CollectiveCounter()
    try:
        def shard(model: nn.Module) -> nn.Module:
            for block in model.layers:
                fully_shard(block)
            fully_shard(model)
            return model

        # every rank trains on its own batches (data parallel); both arms see the same ones
        batches = make_batches(size, args.batches, args.seed + 1000 * rank)
        census.install()
        arms = [build_arm("unwatched", size, args.seed, None, wrap=shard),
                build_arm("watched", size, args.seed, Path(work) / "fsdp2-probes", wrap=shard)]
        census.take()

        def count(arm: Arm) -> None:
            arm.collectives.append(census.take())

        def barrier() -> None:
            dist.barrier()
            census.take()  # the barrier is the harness's, not an arm's

        for arm in arms:
            barrier()
            for _ in range(args.warmup):
                train_step(arm, batches[arm.steps_done % len(batches)])
                count(arm)
            settle(arm)
        say = print if rank == 0 else (lambda line: None)
        say(f"warm-up done ({args.warmup} steps per arm)")
        run_rounds(arms, batches, args.rounds, args.steps_per_round, args.settle, between=barrier,
                   each_step=count, say=lambda line: say(line) or sys.stdout.flush())
        barrier()
        census.uninstall()
        mine = {a.name: {"times_s": a.times_s, "round_medians_s": a.round_medians_s, "last_loss": a.last_loss,
                         "collectives": [dict(c) for c in a.collectives]} for a in arms}
        summary = (f"probes {sorted(arms[1].watch.probes)}, not applicable {arms[1].watch.not_applicable or '{}'},"
                   f" records written {arms[1].watch.recorder.records_written},"
                   f" dropped {arms[1].watch.recorder.dropped}")
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, {"arms": mine, "summary": summary})
        if rank == 0:
            fsdp2_report(gathered, args)
    finally:
        census.uninstall()
        for arm in arms:
            if arm.watch is not None:
                arm.watch.close()
        dist.destroy_process_group()


def spans(steps: list[int]) -> str:
    """Sorted step numbers as ranges: "0, 2-7, 9"."""
    out: list[str] = []
    for step in steps:
        if out and step == int(out[-1].rsplit("-", 1)[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{step}"
        else:
            out.append(str(step))
    return ", ".join(out)


def added_collectives(unwatched: list[dict[str, int]], watched: list[dict[str, int]]) -> dict[str, list[int]]:
    """Collectives the probes added, by step: ``{"+1 all_reduce": [steps...]}``; the unwatched arm's
    most common per-step census is the baseline (FSDP2's own all-gathers and reduce-scatters)."""
    usual = Counter(Counter(tuple(sorted(c.items())) for c in unwatched)).most_common(1)
    base = Counter(dict(usual[0][0])) if usual else Counter()
    out: dict[str, list[int]] = {}
    for step, census in enumerate(watched):
        diff = Counter(census)
        diff.subtract(base)
        label = ", ".join(f"{n:+d} {name}" for name, n in sorted(diff.items()) if n) or "+0"
        out.setdefault(label, []).append(step)
    return out


def fsdp2_report(ranks: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Rank 0: per-rank table, ratios, and the collectives the probes added per step."""
    from inspector.probes import Sampling

    print(f"\n== FSDP2, {len(ranks)} ranks (gloo, CPU, fully_shard per block + root): watched (default probes)"
          " against unwatched ==")
    print(f"{'rank':<6}{'arm':<11}{'steps':>6}{'median ms':>11}{'mean ms':>10}{'ratio':>9}{'mean x':>9}{'paired':>9}"
          f"{'budget':>9}{'':>6}  final loss")
    verdicts = []
    for r, got in enumerate(ranks):
        base = got["arms"]["unwatched"]
        for name, arm in got["arms"].items():
            cols = f"{'-':>9}" * 4 + f"{'':>6}"
            if arm is not base:
                q = ratios(arm["times_s"], arm["round_medians_s"], base["times_s"], base["round_medians_s"])
                verdict = "PASS" if max(q["ratio"], q["mean_ratio"]) <= BUDGET else "FAIL"
                verdicts.append(verdict)
                cols = (f"{q['ratio']:>8.3f}x{q['mean_ratio']:>8.3f}x{q['paired_ratio']:>8.3f}x"
                        f"{'<=' + format(BUDGET, '.2f') + 'x':>9}{verdict:>6}")
            print(f"{r:<6}{name:<11}{len(arm['times_s']):>6}{1e3 * statistics.median(arm['times_s']):>11.2f}"
                  f"{1e3 * statistics.fmean(arm['times_s']):>10.2f}{cols}  {arm['last_loss']:.6f}")
    sampling = Sampling()
    for r, got in enumerate(ranks):
        plain, probed = got["arms"]["unwatched"]["collectives"], got["arms"]["watched"]["collectives"]
        totals = sorted({sum(c.values()) for c in plain})
        added = added_collectives(plain, probed)
        print(f"rank {r} collectives per step: unwatched {totals}; added by the probes: "
              + "; ".join(f"{label} at steps {spans(steps)}" for label, steps in added.items()))
    print(f"  gradients sampled every {sampling.gradients} steps, experts every {sampling.experts},"
          f" attention/activations every {sampling.attention}/{sampling.activations}")
    print(f"  watched: {ranks[0]['summary']}")
    verdict = "PASS" if set(verdicts) == {"PASS"} else "FAIL"
    print(f"FSDP2 verdict (both ratios <= {BUDGET:.2f}x on every rank): {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"stack": "fsdp2", "ranks": ranks}))


def free_port() -> int:
    """A TCP port free now on 127.0.0.1 (for the rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fsdp2_stack(args: argparse.Namespace, size: ModelSize, work: Path) -> None:
    """Start the ranks (spawn; ``join`` waits for both and ends the other if one fails)."""
    import torch.multiprocessing as mp

    mp.spawn(fsdp2_rank, args=(2, f"tcp://127.0.0.1:{free_port()}", args, size, str(work)), nprocs=2, join=True)


# --- main ----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stack", choices=("compile", "fsdp2"), required=True)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 25; --quick 2)")
    p.add_argument("--steps-per-round", type=int, default=None,
                   help="steps of each arm per round (default 8; --quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps of each arm first (default 4; --quick 2)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: a tiny model (dim 32, 2 layers, batch 2 x 16), 2 rounds of 3 steps, 2 warm-up")
    p.add_argument("--dim", type=int, default=ModelSize.dim)
    p.add_argument("--layers", type=int, default=ModelSize.layers)
    p.add_argument("--seq", type=int, default=ModelSize.seq)
    p.add_argument("--batch", type=int, default=ModelSize.batch)
    p.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--threads", type=int, default=2, help="compile stack: torch.set_num_threads (FSDP2: 1 per rank)")
    p.add_argument("--batches", type=int, default=4, help="fixed batches cycled through (default 4)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--settle", type=float, default=0.05, help="untimed pause after each block, s (default 0.05)")
    p.add_argument("--workdir", default=None, help="where runs are written (default: a temporary directory)")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    for name, full, quick in (("rounds", 25, 2), ("steps_per_round", 8, 3), ("warmup", 4, 2)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen stack; exit status 1 when the compile check finds an added break."""
    args = parse_args(argv)
    size = QUICK_SIZE if args.quick else ModelSize(dim=args.dim, layers=args.layers, seq=args.seq, batch=args.batch)
    n_params = sum(p.numel() for p in AttentionMoE(size).parameters())
    print(f"stack {args.stack}: {size} ({n_params / 1e6:.2f}M parameters); {args.rounds} rounds x"
          f" {args.steps_per_round} steps + {args.warmup} warm-up per arm; torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="overhead-stacks-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        if args.stack == "fsdp2":
            fsdp2_stack(args, size, work)
            return 0
        result = compile_stack(args, size, work)
        if args.json:
            Path(args.json).write_text(json.dumps(result))
        return 0 if result["check_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
