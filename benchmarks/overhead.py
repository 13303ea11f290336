"""Probe overhead benchmark (issue 4): engine training step time with and without recording.

One process trains one copy of the engine model per variant (same seed, same batches, same
AdamW), interleaved: every round runs ``--steps-per-round`` steps of each variant in turn, the
order rotated each round, so a slow period of a shared machine hits every variant alike.
A step is timed with ``perf_counter`` around forward + loss + backward + grad clip + optimizer
step + the variant's own per-step logging call + router bias update (a synchronize ends each
step on CUDA). Warm-up steps are run before the first round and not timed.

Variants:
  none          no recording at all (the baseline)
  watch-none    ``inspector.watch(probes="none")``: the Recorder alone, ``w.step(loss=loss)``
  default       ``inspector.watch(probes="default")``, default sampling
  all-every-1   ``inspector.watch(probes="all", every=1)``: every probe, every step
  probe-NAME    ``inspector.watch(probes=[NAME])`` with default sampling: one probe's share
  tb-hist-1     TensorBoard ``SummaryWriter.add_histogram`` of every parameter and gradient every
                step, ``add_scalar("loss")`` every step; the writer's default queue and flush period
  tb-hist-10    the same histograms every 10th step
  wandb-1       ``wandb.watch(model, log="all", log_freq=1)`` in offline mode, ``wandb.log({"loss"})``
                every step (wandb's hooks record on the steps its counters select)
  wandb-10      the same with ``log_freq=10``

With ``--compile`` every variant's model is ``torch.compile``d after the variant's logger is attached
(``watch`` before compile), and dynamo's counters (``torch._dynamo.utils.counters``: unique graphs,
graph breaks, recompiles) are printed per variant for its warm-up (where it compiles; counters are
process-wide, so a later variant's warm-up may also count a recompile of the shared code for its
own model instance) and for its timed rounds (0 breaks and 0 recompiles expected). ``default`` is
then held to ``COMPILE_BUDGETS`` against the compiled ``none``. Caution: the engine's model breaks
the graph on its own (rope's ``int(positions.max())``, the MoE dispatch's ``bincount(...).tolist()``),
so the compiled ``none`` is already many graphs and this figure does not show what the probes add
to a compiled model. ``benchmarks/overhead_stacks.py --stack compile`` does: a model of its own
that compiles to one graph with no break, unwatched vs watched, eager vs compiled, interleaved.

Other stacks (issue 14): ``benchmarks/overhead_stacks.py`` also times a 2-rank FSDP2 run
(``--stack fsdp2``: gloo, CPU, ``fully_shard`` per block + root, launched by the script itself),
with the collectives the probes add per step. It is a file of its own because both stacks need a
model other than the engine's (one that compiles without breaks, and whose blocks FSDP2 can shard)
and FSDP2 needs a launcher and per-rank reporting that this single-process harness does not have.

Background work (the Inspector's writer and system-sampler threads, TensorBoard's writer thread,
the wandb-core process) overlaps training, as it does for a user. At the end of each block the
variant's queued work is drained (``Recorder.flush``, ``SummaryWriter.flush``) and the harness
sleeps ``--settle`` seconds, untimed, so that work left over by one variant is not charged to the
next. Threads that only wake now and then (the system sampler at 1 Hz) keep running through
every variant's blocks; their small cost lands on all variants alike.

Reported per variant: median ms/step (the issue's metric) and p10/p90; the mean, which also
charges the sampled steps (histograms every 10th step, attention maps every 100th...) that the
median hides; ``ratio`` = median / median of ``none``; ``mean x`` = mean / mean of ``none``;
``paired`` = median over rounds of (this round's median / ``none``'s median in the same round),
which cancels slow drifts in machine load. PASS/FAIL applies the issue's budgets to ``ratio``.
The last column is each model's loss after its final step: recording must not change what the
model computes, so these agree up to the drift of CPU kernels that are not bitwise reproducible
(a warning is printed above 1% relative spread).

With ``--device cuda`` the step runs under bf16 autocast (as the engine's Trainer does), and after
the timed rounds a few steps of ``none`` and ``default`` (``--profile-variants``) are run under
``torch.profiler`` and ``torch.cuda.set_sync_debug_mode("warn")`` to count host-device
synchronisations; the variants are first advanced to a step where every sampled probe records.
Each variant holds its own model and AdamW state (``small``: 457M parameters, ~7.3 GB in fp32
with gradients and Adam moments), hence the shorter default variant list on CUDA.
That path has not been run on a GPU yet.

Usage::

    python benchmarks/overhead.py                        # tiny on CPU, every variant (~8-10 min on 2 idle cores)
    python benchmarks/overhead.py --quick                # smoke run (~1-2 min on 2 idle cores)
    python benchmarks/overhead.py --device cuda --config small   # GPU: none/watch-none/default/all-every-1
    python benchmarks/overhead.py --variants none,default --rounds 40 --json /tmp/overhead.json
    python benchmarks/overhead.py --compile --config debug --variants none,default   # torch.compile (engine breaks)
    python benchmarks/overhead_stacks.py --stack compile    # torch.compile on a break-free model
    python benchmarks/overhead_stacks.py --stack fsdp2      # 2-rank FSDP2 (CPU, gloo)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import statistics
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from inspector_engine.config import ModelConfig, get_config
from inspector_engine.data import load_bytes
from inspector_engine.model import Transformer
from inspector_engine.training.config import TrainConfig
from inspector_engine.training.data import windows
from inspector_engine.training.trainer import build_optimizer

ALL_VARIANTS = ("none", "watch-none", "default", "all-every-1", "tb-hist-1", "tb-hist-10", "wandb-1", "wandb-10")
CUDA_VARIANTS = ("none", "watch-none", "default", "all-every-1")
BUDGETS = {"cpu": {"default": 1.03, "all-every-1": 1.5}, "cuda": {"default": 1.02}}
COMPILE_BUDGETS = {"default": 1.05}
"""With ``--compile``: every variant's model is ``torch.compile``d (the Inspector's watch attached before)."""
LOSS_TOLERANCE = 0.01
"""Relative spread of final losses accepted as noise: CPU kernels are not bitwise reproducible
here: two identical baseline models, interleaved, differed by 1e-7 after 3 steps, and the variants'
losses by up to 1e-3 after 33 steps."""
SYNC_EVENT_NAMES = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy",
                    "cudaMemcpy2D", "aten::_local_scalar_dense")
"""Profiler events that block the host on the GPU (the last is every `.item()`/`bool()` of a CUDA tensor)."""


# --- the variants' per-step logging ------------------------------------------------------------

class StepLogger(Protocol):
    """What a variant does besides training: hooks set up at creation, a call after each step."""

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        """Called after ``optimizer.step()``, before ``zero_grad`` (gradients still present); timed."""

    def settle(self) -> None:
        """Wait for this variant's queued background work (untimed, at the end of a block)."""

    def close(self) -> None:
        """Remove hooks and close files."""

    def summary(self) -> str:
        """One line on what was recorded (for the report)."""


class NoLogger:
    """The baseline: records nothing."""

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        """Nothing."""

    def settle(self) -> None:
        """Nothing."""

    def close(self) -> None:
        """Nothing."""

    def summary(self) -> str:
        """Nothing recorded."""
        return ""


class InspectorLogger:
    """``inspector.watch`` with a probe set and sampling; steps advance from the optimizer's hook."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run_dir: Path,
                 probes: str | list[str], every: int | None) -> None:
        import inspector

        before = set(threading.enumerate())
        self.watch = inspector.watch(model, run_dir, probes=probes, every=every, optimizer=optimizer,
                                     name=run_dir.name)
        self.threads = [t.name for t in threading.enumerate() if t not in before]

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        """``w.step(loss=loss)``, as a user would call it."""
        self.watch.step(loss=loss)

    def settle(self) -> None:
        """Block until the writer thread has written what is queued."""
        self.watch.recorder.flush(timeout=60.0)

    def close(self) -> None:
        """Detach every probe and close the run."""
        self.watch.close()

    def summary(self) -> str:
        """Probes attached, records written and dropped."""
        rec = self.watch.recorder
        skipped = f" not applicable: {sorted(self.watch.not_applicable)}" if self.watch.not_applicable else ""
        return (f"probes {sorted(self.watch.probes) or '[]'}{skipped}; records written {rec.records_written}, "
                f"dropped {rec.dropped}")


class TensorBoardLogger:
    """``SummaryWriter.add_histogram`` of every parameter and gradient every ``freq`` steps."""

    def __init__(self, model: torch.nn.Module, log_dir: Path, freq: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.model, self.freq = model, freq
        self.writer = SummaryWriter(log_dir=str(log_dir))  # default max_queue=10, flush_secs=120
        self.histograms = 0

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        """The loss every step; parameter and gradient histograms on every ``freq``-th step."""
        self.writer.add_scalar("loss", loss.item(), step)
        if step % self.freq:
            return
        for name, param in self.model.named_parameters():
            self.writer.add_histogram(f"parameters/{name}", param.detach(), step)
            if param.grad is not None:
                self.writer.add_histogram(f"gradients/{name}", param.grad, step)
                self.histograms += 1
            self.histograms += 1

    def settle(self) -> None:
        """Write the writer's queue out."""
        self.writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self.writer.close()

    def summary(self) -> str:
        """Histograms written."""
        return f"histograms {self.histograms}"


class WandbLogger:
    """``wandb.watch(model, log="all", log_freq=freq)`` on the process's one offline run."""

    _run: Any = None
    _index = 0

    def __init__(self, model: torch.nn.Module, run_root: Path, freq: int) -> None:
        import wandb

        if WandbLogger._run is None:
            WandbLogger._run = wandb.init(mode="offline", dir=str(run_root), project="inspector-overhead",
                                          settings=wandb.Settings(console="off", silent=True, disable_git=True))
        self.run = WandbLogger._run
        self.key = f"loss/wandb-{freq}"
        # wandb's histogram hooks log into the global run; one run, one `idx` per watched model
        self.run.watch(model, log="all", log_freq=freq, idx=WandbLogger._index)
        WandbLogger._index += 1
        self.model = model

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        """``wandb.log`` of the loss every step (this also commits the histograms of the step)."""
        self.run.log({self.key: loss.item()})

    def settle(self) -> None:
        """wandb-core works in its own process; `--settle` gives it time."""

    def close(self) -> None:
        """Unwatch; the run is finished once, by `finish_wandb`."""
        with contextlib.suppress(Exception):
            self.run.unwatch(self.model)

    def summary(self) -> str:
        """Where the offline run is."""
        return f"offline run dir {self.run.dir}"

    @classmethod
    def finish(cls) -> None:
        """Finish the shared run (writes it out; offline, nothing is uploaded)."""
        if cls._run is not None:
            cls._run.finish()
            cls._run = None


# --- one training process per variant, in one process -----------------------------------------

@dataclasses.dataclass
class Variant:
    """A model, its optimizer, its logger and the step times measured for it."""

    name: str
    model: Transformer
    optimizer: torch.optim.Optimizer
    logger: StepLogger
    steps_done: int = 0
    times_s: list[float] = dataclasses.field(default_factory=list)
    round_medians_s: list[float] = dataclasses.field(default_factory=list)
    last_loss: float = math.nan
    run: Any = None        # what the step calls: the model, or its ``torch.compile`` wrapper
    dynamo: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # "warm-up"/"rounds" counts


def make_logger(name: str, model: Transformer, optimizer: torch.optim.Optimizer, work: Path) -> StepLogger:
    """The logger of the variant called ``name`` (see the module docstring)."""
    if name == "none":
        return NoLogger()
    if name == "watch-none":
        return InspectorLogger(model, optimizer, work / "runs" / name, "none", None)
    if name == "default":
        return InspectorLogger(model, optimizer, work / "runs" / name, "default", None)
    if name == "all-every-1":
        return InspectorLogger(model, optimizer, work / "runs" / name, "all", 1)
    if name.startswith("probe-"):
        return InspectorLogger(model, optimizer, work / "runs" / name, [name[len("probe-"):]], None)
    if name.startswith("tb-hist-"):
        return TensorBoardLogger(model, work / "tb" / name, int(name.rsplit("-", 1)[1]))
    if name.startswith("wandb-"):
        return WandbLogger(model, work / "wandb", int(name.rsplit("-", 1)[1]))
    raise ValueError(f"unknown variant {name!r}; known: {', '.join(ALL_VARIANTS)}")


def build_variant(name: str, cfg: ModelConfig, device: torch.device, seed: int, work: Path,
                  compile_model: bool = False) -> Variant:
    """A fresh model (same seed for every variant) with the Trainer's AdamW and the variant's logger;
    with ``compile_model`` the step calls ``torch.compile(model)`` (watched before compiling)."""
    torch.manual_seed(seed)
    model = Transformer(cfg).to(device)
    model.train()
    optimizer = build_optimizer(model, TrainConfig())
    v = Variant(name, model, optimizer, make_logger(name, model, optimizer, work))
    v.run = torch.compile(model) if compile_model else model
    return v


def dynamo_counts() -> dict[str, int]:
    """Dynamo's graph, graph-break and recompile counters so far (process-wide)."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]), "breaks": int(sum(counters["graph_break"].values())),
            "recompiles": int(sum(counters["recompiles"].values()))}


def counts_since(before: dict[str, int]) -> dict[str, int]:
    """Dynamo's counts added since ``before``."""
    now = dynamo_counts()
    return {k: now[k] - before[k] for k in now}


def make_batches(n: int, batch_size: int, seq_len: int, seed: int,
                 device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` fixed (inputs, targets) batches of the engine's corpus, already on the device."""
    tokens = load_bytes()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=gen)
        x_BT, y_BT = windows(tokens, starts, seq_len)
        out.append((x_BT.to(device), y_BT.to(device)))
    return out


def train_step(v: Variant, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, gamma: float,
               clip: float, sync: bool) -> float:
    """One timed step of variant ``v`` (the Trainer's step without data loading or metrics); seconds."""
    x_BT, y_BT = batch
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    t0 = time.perf_counter()
    with autocast:
        logits_BTV = (v.model if v.run is None else v.run)(x_BT)
    ce = F.cross_entropy(logits_BTV.float().flatten(0, 1), y_BT.flatten())
    loss = ce + v.model.aux_loss().float()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(v.model.parameters(), clip)
    v.optimizer.step()
    v.logger.after_step(v.steps_done, loss.detach())
    v.optimizer.zero_grad(set_to_none=True)
    for router in v.model.routers():
        router.balance_update(gamma)
    if sync and device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    v.steps_done += 1
    if sync:  # not while counting syncs: this read is one
        v.last_loss = float(loss.detach())
    return dt


# --- statistics and the report ----------------------------------------------------------------

def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile of a non-empty list."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def report(variants: list[Variant], device: torch.device) -> list[dict[str, Any]]:
    """Print the final table; returns its rows."""
    base = next((v for v in variants if v.name == "none"), None)
    budgets = COMPILE_BUDGETS if any(v.dynamo for v in variants) else BUDGETS.get(device.type, {})
    rows = []
    for v in variants:
        med, mean = statistics.median(v.times_s), statistics.fmean(v.times_s)
        row: dict[str, Any] = {"variant": v.name, "steps": len(v.times_s), "median_ms": 1e3 * med,
                               "p10_ms": 1e3 * quantile(v.times_s, 0.1), "p90_ms": 1e3 * quantile(v.times_s, 0.9),
                               "mean_ms": 1e3 * mean, "final_loss": v.last_loss}
        if base is not None:
            row["ratio"] = med / statistics.median(base.times_s)
            row["mean_ratio"] = mean / statistics.fmean(base.times_s)
            row["paired_ratio"] = statistics.median(a / b for a, b in zip(v.round_medians_s, base.round_medians_s))
        budget = budgets.get(v.name)
        row["budget"] = budget
        row["verdict"] = "" if budget is None or "ratio" not in row else ("PASS" if row["ratio"] <= budget else "FAIL")
        if v.dynamo:
            row["dynamo"] = v.dynamo
        rows.append(row)

    print(f"\n{'variant':<13}{'steps':>6}{'median ms':>11}{'p10-p90 ms':>16}{'mean ms':>10}"
          f"{'ratio':>8}{'mean x':>8}{'paired':>8}{'budget':>8}{'':>6}  final loss")
    for r in rows:
        spread = f"{r['p10_ms']:.1f}-{r['p90_ms']:.1f}"
        ratios = "".join(f"{r[k]:>7.3f}x" if k in r else f"{'-':>8}" for k in ("ratio", "mean_ratio", "paired_ratio"))
        budget = f"<={r['budget']:.2f}x" if r["budget"] else "-"
        print(f"{r['variant']:<13}{r['steps']:>6}{r['median_ms']:>11.2f}{spread:>16}{r['mean_ms']:>10.2f}"
              f"{ratios}{budget:>8}{r['verdict']:>6}  {r['final_loss']:.6f}")
        if "dynamo" in r:
            w, t = r["dynamo"]["warm-up"], r["dynamo"]["rounds"]
            print(f"{'':<13}torch.compile: warm-up graphs {w['graphs']}, graph breaks {w['breaks']}, recompiles"
                  f" {w['recompiles']}; timed rounds: graph breaks {t['breaks']}, recompiles {t['recompiles']}")
    losses = [r["final_loss"] for r in rows]
    spread = (max(losses) - min(losses)) / abs(statistics.median(losses))
    if spread > LOSS_TOLERANCE:
        print(f"WARNING: final losses differ by {100 * spread:.2f}% between variants (tolerance"
              f" {100 * LOSS_TOLERANCE:.0f}%): a variant changed what the model computes")
    return rows


# --- CUDA: count host-device synchronisations --------------------------------------------------

def sampling_period() -> int:
    """Least common multiple of the default probe periods: from such a step on, every probe records."""
    from inspector.probes import Sampling

    defaults = Sampling()
    periods = [getattr(defaults, f.name) for f in dataclasses.fields(Sampling) if f.name != "max_attention_rows"]
    return math.lcm(*[p for p in periods if isinstance(p, int) and p > 0])


class SyncWarnings:
    """Counts ``set_sync_debug_mode("warn")`` warnings per Python thread name while active."""

    def __init__(self) -> None:
        self.by_thread: Counter[str] = Counter()

    def __enter__(self) -> "SyncWarnings":
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")
        previous = warnings.showwarning

        def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            if "synchroniz" in str(message):
                self.by_thread[threading.current_thread().name] += 1
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)


def count_syncs(v: Variant, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                gamma: float, clip: float, steps: int) -> dict[str, Any]:
    """Synchronising events (profiler; all threads, by profiler thread id) and sync-debug warnings (by
    Python thread name) over ``steps`` steps of ``v``, starting at a step where every probe records."""
    from torch.profiler import ProfilerActivity, profile

    period = sampling_period()
    while v.steps_done % period:  # start on a step where every sampled probe records
        train_step(v, batches[v.steps_done % len(batches)], device, gamma, clip, sync=False)
    torch.cuda.synchronize(device)
    start = v.steps_done
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof, SyncWarnings() as sw:
        for _ in range(steps):
            train_step(v, batches[v.steps_done % len(batches)], device, gamma, clip, sync=False)
    torch.cuda.synchronize(device)
    api = Counter()
    by_tid: Counter[tuple[str, int]] = Counter()
    for ev in prof.events():
        if ev.name in SYNC_EVENT_NAMES:
            api[ev.name] += 1
            by_tid[(ev.name, ev.thread)] += 1
    return {"variant": v.name, "steps": f"{start}..{v.steps_done - 1}", "sync_events": dict(api),
            "sync_events_by_thread_id": {f"{n}@{t}": c for (n, t), c in by_tid.items()},
            "sync_debug_warnings_by_thread": dict(sw.by_thread),
            "background_threads": getattr(v.logger, "threads", [])}


def print_syncs(results: list[dict[str, Any]]) -> None:
    """Print the sync counts of the profiled variants and the difference to ``none``."""
    print("\n== host-device synchronisations (CUDA) ==")
    for r in results:
        print(f"{r['variant']:<12} steps {r['steps']}: sync events {r['sync_events'] or '{}'}")
        print(f"{'':<12} by thread id {r['sync_events_by_thread_id'] or '{}'}")
        print(f"{'':<12} sync-debug warnings by thread {r['sync_debug_warnings_by_thread'] or '{}'}"
              f" (recording threads: {r['background_threads'] or 'none'})")
    base = next((r for r in results if r["variant"] == "none"), None)
    if base is None:
        return
    for r in results:
        if r is base:
            continue
        bg = set(r["background_threads"])
        names = sorted(set(r["sync_events"]) | set(base["sync_events"]))
        extra_api = {k: r["sync_events"].get(k, 0) - base["sync_events"].get(k, 0) for k in names}
        train_warn = sum(c for t, c in r["sync_debug_warnings_by_thread"].items() if t not in bg)
        base_warn = sum(base["sync_debug_warnings_by_thread"].values())
        print(f"{r['variant']} vs none: sync events {extra_api} (all threads);"
              f" sync warnings on the training threads {train_warn - base_warn:+d}")


# --- main --------------------------------------------------------------------------------------

def quiet_wandb(work: Path) -> None:
    """Environment that keeps wandb offline, silent and inside ``work`` (set before importing it)."""
    (work / "wandb").mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true", "WANDB_ERROR_REPORTING": "false", "WANDB_DIR": str(work / "wandb"),
        "WANDB_CACHE_DIR": str(work / "wandb-cache"), "WANDB_CONFIG_DIR": str(work / "wandb-config"),
        "WANDB_DATA_DIR": str(work / "wandb-data"), "WANDB_ARTIFACT_DIR": str(work / "wandb-artifacts"),
    })


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="engine model config (default tiny)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--variants", default=None,
                   help=f"comma list (default: all on CPU, {','.join(CUDA_VARIANTS)} on CUDA); known: {','.join(ALL_VARIANTS)}")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument("--steps-per-round", type=int, default=10,
                   help="steps of each variant per round (default 10; rounds x steps a multiple of 100 makes the"
                        " mean charge every sampled probe its exact share)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of each variant before round 1 (default 5)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 5 steps, 2 warm-up steps")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="sequences per step (Trainer default)")
    p.add_argument("--seq-len", type=int, default=TrainConfig.seq_len, help="tokens per sequence (Trainer default)")
    p.add_argument("--batches", type=int, default=8, help="fixed batches cycled through (default 8)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--settle", type=float, default=0.1, help="untimed pause after each block, seconds (default 0.1)")
    p.add_argument("--profile-variants", default="none,default", help="CUDA: variants whose syncs are counted")
    p.add_argument("--profile-steps", type=int, default=12, help="CUDA: steps profiled per variant (default 12)")
    p.add_argument("--workdir", default=None, help="where runs are written (default: a temporary directory, removed)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every variant's model (watch attached before); prints dynamo's graph-break"
                        " and recompile counts per variant; budget default <= 1.05x the compiled model unwatched")
    p.add_argument("--json", default=None, help="also write the table, the per-step times and sync counts here")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps_per_round, args.warmup = 2, 5, 2
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    names = (args.variants.split(",") if args.variants
             else list(CUDA_VARIANTS if device.type == "cuda" else ALL_VARIANTS))
    unknown = [n for n in names if n not in ALL_VARIANTS and not n.startswith("probe-")]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(ALL_VARIANTS)}")
    missing = sorted({lib for n in names for prefix, lib in (("tb-", "tensorboard"), ("wandb-", "wandb"))
                      if n.startswith(prefix) and importlib.util.find_spec(lib) is None})
    if missing:
        raise SystemExit(f"the variants need {', '.join(missing)}: pip install -e '.[bench]' (or leave those"
                         " variants out of --variants)")

    with contextlib.ExitStack() as stack:
        work = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="overhead-")))
        quiet_wandb(work)
        cfg = get_config(args.config)
        train_cfg = TrainConfig()
        gamma, clip = cfg.bias_update_gamma, train_cfg.grad_clip
        import inspector.probes as probes

        print(f"config {args.config}, device {device}, threads {torch.get_num_threads()}, batch {args.batch_size} x "
              f"seq {args.seq_len}, {args.rounds} rounds x {args.steps_per_round} steps + {args.warmup} warm-up; "
              f"torch {torch.__version__}")
        print(f"probe sets: default {probes.PROBE_SETS['default']}, all {probes.PROBE_SETS['all']}")
        batches = make_batches(args.batches, args.batch_size, args.seq_len, args.seed, device)
        t_setup = time.perf_counter()
        variants = [build_variant(n, cfg, device, args.seed, work, args.compile) for n in names]
        try:
            for v in variants:
                before = dynamo_counts()
                for _ in range(args.warmup):
                    train_step(v, batches[v.steps_done % len(batches)], device, gamma, clip, sync=True)
                v.logger.settle()
                if args.compile:
                    v.dynamo["warm-up"] = counts_since(before)
                    v.dynamo["rounds"] = {"graphs": 0, "breaks": 0, "recompiles": 0}
            print(f"set-up and warm-up: {time.perf_counter() - t_setup:.0f} s", flush=True)
            t_start = time.perf_counter()
            for rnd in range(args.rounds):
                shift = rnd % len(variants)
                for v in variants[shift:] + variants[:shift]:
                    before = dynamo_counts()
                    block = [train_step(v, batches[v.steps_done % len(batches)], device, gamma, clip, sync=True)
                             for _ in range(args.steps_per_round)]
                    v.times_s += block
                    v.round_medians_s.append(statistics.median(block))
                    if args.compile:
                        for k, n in counts_since(before).items():
                            v.dynamo["rounds"][k] += n
                    v.logger.settle()
                    time.sleep(args.settle)
                spent = time.perf_counter() - t_start
                print(f"round {rnd + 1}/{args.rounds} done ({spent:.0f} s, about"
                      f" {spent / (rnd + 1) * (args.rounds - rnd - 1):.0f} s to go)", flush=True)
            rows = report(variants, device)
            for v in variants:
                line = v.logger.summary()
                if line:
                    print(f"  {v.name}: {line}")
            syncs: list[dict[str, Any]] = []
            if device.type == "cuda":
                wanted = [n for n in args.profile_variants.split(",") if n]
                try:
                    syncs = [count_syncs(v, batches, device, gamma, clip, args.profile_steps)
                             for v in variants if v.name in wanted]
                    print_syncs(syncs)
                except Exception as exc:  # the timings above stay valid
                    print(f"sync count failed: {type(exc).__name__}: {exc}")
            if args.json:
                Path(args.json).write_text(json.dumps({
                    "args": vars(args), "rows": rows, "syncs": syncs,
                    "times_ms": {v.name: [1e3 * t for t in v.times_s] for v in variants}}, indent=1))
                print(f"wrote {args.json}")
        finally:
            t_close = time.perf_counter()
            for v in variants:
                v.logger.close()
            WandbLogger.finish()
            print(f"closed in {time.perf_counter() - t_close:.0f} s")


if __name__ == "__main__":
    main()
