"""Benchmark the run store (Recorder / RunReader) against TensorBoard's SummaryWriter.

The event mix is what the probes of a 24-layer MoE model record, per training step:

* 50 scalars                                  -> ``Recorder.scalars`` (one call)
* 100 histograms of 64 bins                   -> ``Recorder.histograms`` with a [100, 64] array
* 24 expert-load vectors of 64 experts        -> ``Recorder.submit("expert_load", ..., rows=24)``
* every 10th step, 24 fp16 attention maps of 16 heads x 128 x 128 (one per layer; softmax
  probabilities under a causal mask)          -> ``Recorder.attention_map`` (one call per map)

All data is generated once up front (a small pool of arrays cycled through), so generating it is
never timed. TensorBoard records the same mix the way a TensorBoard user would: ``add_scalar`` x 50,
``add_histogram_raw`` x 100 (the same counts), ``add_histogram_raw`` x 24 for the expert loads
(bucket = expert), and ``add_images`` of the 16 heads of each layer (PNG, 8 bit).

What is measured, for our store and for TensorBoard:

1. write steps/s, wall, including the final close / flush. A Recorder never blocks its caller
   and drops records once its queue is full, so a loop that does nothing but record would measure
   the speed of dropping: the flat-out run waits for the writer (``Recorder.flush``) every
   ``--flush-every`` steps. The dropped-record count is printed and must be 0.
2. writer CPU per step: process user CPU (all threads, ``resource.getrusage``) over the write
   loop and the final close, divided by steps (system CPU printed alongside).
3. bytes per step on disk.
4. tail latency p50/p95: a reader in another (spawned) process polls every ~5 ms
   (``RunReader.read_new`` / TensorBoard's ``EventFileLoader``) while the writer runs paced
   (``--rate`` steps/s for ours; TensorBoard at half its own flat-out rate, since it cannot do
   ``--rate``); latency = time the reader first holds a step's scalars - that step's wall_time.
5. seconds to load 10,000 steps of scalars into pandas in a fresh process
   (``open_run(path).to_pandas("scalar")``; TensorBoard: ``EventAccumulator`` + DataFrame on its
   shorter run, extrapolated linearly to 10,000 steps and labelled so).
6. attention-map fetch: cold (fresh process: open the run, build the blob index, first fetch)
   and warm (median / p95 over random steps and layers).

Items 5 and 6 are measured on two 10,000-step runs: the flat-out run (a frame holds up to
``--flush-every`` steps) and a *per-step framing* run (one frame per kind per step: what any
training loop slower than the Recorder's 20 ms coalescing window produces, i.e. the usual case).
Each run is read right after it is written (page cache warm) and deleted before the next one; the
flat-out run is then also read after evicting its files from the page cache (fsync +
``posix_fadvise(DONTNEED)`` on its own files only), i.e. from the disk.

The machine is shared: the benchmark prints how many CPUs *other* processes kept busy (from
/proc/stat) next to each write run and for the whole benchmark. Wall-clock figures degrade with
that number; the CPU figures much less.

Run from the repository root::

    .venv/bin/python benchmarks/store_bench.py            # default: --steps 10000 --tb-steps 300
    .venv/bin/python benchmarks/store_bench.py --quick    # a smoke run (~1 min)
    .venv/bin/python benchmarks/store_bench.py --no-tb    # our store only

The exit status is 0 only when every budget line says PASS.

Measuring a patched copy of the package: ``PYTHONPATH=/tmp/copy python benchmarks/store_bench.py``
(an importable ``inspector`` on the path wins over the checkout).
"""
from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

try:  # prefer an `inspector` already importable (installed, or a patched copy on PYTHONPATH)
    import inspector  # noqa: F401
except ImportError:  # pragma: no cover - plain checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inspector.store import RunError, open_run  # noqa: E402
from inspector.store.recorder import Recorder  # noqa: E402

LAYERS, HEADS, TOKENS, HEAD_DIM = 24, 16, 128, 64
N_SCALARS, N_HISTS, BINS, EXPERTS = 50, 100, 64, 64
MAP_EVERY = 10
POOL = 16                     # distinct per-step payloads, cycled
FIRST_SCALAR = "train/s00"

BUDGET = {"steps_s": 1000.0, "cpu_ms": 1.0, "p95_ms": 50.0, "load_s": 0.1, "fetch_ms": 2.0}


# ---- the event mix -----------------------------------------------------------------------------

@dataclass
class Mix:
    """Everything one step records, pre-generated (POOL variants, cycled by step)."""

    scalar_names: list[str]
    scalars: list[dict[str, float]]
    hist_names: list[str]
    hist_counts: np.ndarray          # [POOL, 100, 64] int64
    hist_lo: np.ndarray
    hist_hi: np.ndarray
    hist_stats: np.ndarray           # [POOL, 100, 3]: num, sum, sum of squares (for TensorBoard)
    expert_names: list[str]
    expert_layers: np.ndarray
    expert_counts: np.ndarray        # [POOL, 24, 64] int64
    expert_cols: list[dict[str, np.ndarray]]
    maps: list[np.ndarray]           # 24 x [16, 128, 128] float16
    maps_tb: list[np.ndarray] = field(default_factory=list)   # 24 x [16, 1, 128, 128] float32


def attention_probs(rng: np.random.Generator, heads: int = HEADS, tokens: int = TOKENS) -> np.ndarray:
    """Realistic causal softmax probabilities [heads, tokens, tokens] as float16."""
    q = rng.standard_normal((heads, tokens, HEAD_DIM), dtype=np.float32)
    k = rng.standard_normal((heads, tokens, HEAD_DIM), dtype=np.float32)
    temp = np.linspace(0.5, 3.0, heads, dtype=np.float32)[:, None, None]          # sharp .. diffuse
    slope = np.geomspace(0.5, 0.004, heads).astype(np.float32)[:, None, None]      # ALiBi-like recency
    i = np.arange(tokens)
    dist = (i[:, None] - i[None, :]).astype(np.float32)
    scores = (q @ k.transpose(0, 2, 1)) / np.sqrt(HEAD_DIM) * temp - slope * dist
    scores = np.where(dist < 0, -np.inf, scores)
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(-1, keepdims=True)
    return p.astype(np.float16)


def make_mix(seed: int = 0, *, tb: bool = True) -> Mix:
    rng = np.random.default_rng(seed)
    scalar_names = [f"train/s{i:02d}" for i in range(N_SCALARS)]
    scalars = [dict(zip(scalar_names, rng.standard_normal(N_SCALARS).tolist())) for _ in range(POOL)]
    hist_names = [f"act/layer{i // 4:02d}/{m}" for i, m in
                  zip(range(N_HISTS), ["attn", "mlp", "router", "resid"] * N_HISTS)]
    # counts of N(0,1) samples over [-4, 4)
    edges = np.linspace(-4.0, 4.0, BINS + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    base = np.diff(np.exp(-edges ** 2 / 2).cumsum()) + 1e-3
    hist_counts = rng.poisson(np.abs(base) / np.abs(base).sum() * 65536, (POOL, N_HISTS, BINS)).astype(np.int64)
    num = hist_counts.sum(-1)
    s1 = (hist_counts * centers).sum(-1)
    s2 = (hist_counts * centers ** 2).sum(-1)
    expert_counts = rng.multinomial(4096 * 8, np.full(EXPERTS, 1 / EXPERTS), (POOL, LAYERS)).astype(np.int64)
    expert_cols = []
    for p in range(POOL):
        c = expert_counts[p].astype(np.float64)
        mean = c.mean(1)
        frac = c / c.sum(1, keepdims=True)
        expert_cols.append({"imbalance": c.max(1) / mean, "cv": c.std(1) / mean,
                            "router_entropy": -(frac * np.log(frac)).sum(1),
                            "dropped": np.zeros(LAYERS, np.int64), "aux_loss": rng.random(LAYERS) * 1e-2})
    maps = [attention_probs(rng) for _ in range(LAYERS)]
    mix = Mix(scalar_names, scalars, hist_names, hist_counts, np.full(N_HISTS, -4.0), np.full(N_HISTS, 4.0),
              np.stack([num, s1, s2], -1).astype(np.float64), [f"moe/layer{i:02d}" for i in range(LAYERS)],
              np.arange(LAYERS, dtype=np.int32), expert_counts, expert_cols, maps)
    if tb:
        mix.maps_tb = [m[:, None].astype(np.float32) for m in maps]
    return mix


def emit_ours(rec: Recorder, mix: Mix, step: int) -> None:
    """One step of the mix, recorded the way the probes do (one call per kind; one per map)."""
    p = step % POOL
    rec.step = step
    rec.scalars(mix.scalars[p])
    rec.histograms(mix.hist_names, mix.hist_counts[p], mix.hist_lo, mix.hist_hi)
    rec.submit("expert_load", {"name": mix.expert_names, "layer": mix.expert_layers,
                               "counts": mix.expert_counts[p], **mix.expert_cols[p]}, rows=LAYERS)
    if step % MAP_EVERY == 0:
        for layer, probs in enumerate(mix.maps):
            rec.attention_map(f"attn/layer{layer:02d}", probs, layer=layer)


_TB_EDGES = np.linspace(-4.0, 4.0, BINS + 1)[1:].tolist()
_TB_EXPERT_EDGES = [float(e) for e in range(1, EXPERTS + 1)]


def emit_tb(w: Any, mix: Mix, step: int) -> None:
    """The same step for a torch.utils.tensorboard.SummaryWriter."""
    p = step % POOL
    for name, value in mix.scalars[p].items():
        w.add_scalar(name, value, step)
    counts, stats = mix.hist_counts[p], mix.hist_stats[p]
    for i, name in enumerate(mix.hist_names):
        num, s1, s2 = stats[i]
        w.add_histogram_raw(name, -4.0, 4.0, num, s1, s2, _TB_EDGES, counts[i].tolist(), step)
    for layer, name in enumerate(mix.expert_names):
        c = mix.expert_counts[p, layer]
        w.add_histogram_raw(name, 0.0, float(EXPERTS - 1), float(c.sum()), float(c @ np.arange(EXPERTS)),
                            float(c @ np.arange(EXPERTS) ** 2), _TB_EXPERT_EDGES, c.tolist(), step)
    if step % MAP_EVERY == 0:
        for layer, imgs in enumerate(mix.maps_tb):
            w.add_images(f"attn/layer{layer:02d}", imgs, step, dataformats="NCHW")


# ---- writing -----------------------------------------------------------------------------------

@dataclass
@dataclass
class WriteResult:
    steps: int
    wall_s: float
    user_s: float
    sys_s: float
    producer_s: float                # CPU of the calling thread inside the record calls
    bytes: int
    dropped: int = 0
    others_cpus: float = float("nan")   # CPUs kept busy by other processes meanwhile

    @property
    def steps_s(self) -> float:
        return self.steps / self.wall_s

    @property
    def cpu_ms(self) -> float:
        return self.user_s / self.steps * 1e3

    @property
    def sys_ms(self) -> float:
        return self.sys_s / self.steps * 1e3

    @property
    def bytes_step(self) -> float:
        return self.bytes / self.steps


def dir_bytes(path: str | Path) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


class Contention:
    """How many CPUs other processes kept busy between start() and stop() (Linux /proc/stat)."""

    def __init__(self) -> None:
        self.start()

    @staticmethod
    def _machine_busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                vals = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    def start(self) -> None:
        self.t, self.busy, self.own = time.perf_counter(), self._machine_busy(), self._own()

    def stop(self) -> float:
        busy = self._machine_busy()
        if busy is None or self.busy is None:
            return float("nan")
        # children still running (the tail reader) are not in RUSAGE_CHILDREN until reaped: an
        # over-estimate of others during latency runs, exact elsewhere
        return max(0.0, (busy - self.busy) - (self._own() - self.own)) / max(time.perf_counter() - self.t, 1e-9)


def _pace(t0: float, step: int, rate: float | None) -> None:
    if rate:
        delay = t0 + step / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def write_ours(path: str, mix: Mix, steps: int, *, codec: str = "lz4", rate: float | None = None,
               flush_every: int = 100, per_step_frames: bool = False,
               started: Callable[[], None] | None = None) -> WriteResult:
    """Record `steps` steps of the mix into a new run at `path`.

    `per_step_frames`: no coalescing and a flush after every step, so every kind gets one frame
    per step (as in a training loop slower than the coalescing window).
    """
    kw: dict[str, Any] = {"coalesce_s": 0.0} if per_step_frames else {}
    rec = Recorder(path, name="store-bench", rank=0, world_size=1, local_rank=0, blob_codec=codec, **kw)
    if started is not None:
        started()
    cont = Contention()
    ru0, t0, producer = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0.0
    for step in range(steps):
        _pace(t0, step, rate)
        c = time.thread_time()
        emit_ours(rec, mix, step)
        producer += time.thread_time() - c
        if per_step_frames or (rate is None and flush_every and (step + 1) % flush_every == 0):
            if not rec.flush(timeout=120):
                raise RuntimeError("Recorder.flush timed out")
    rec.close(timeout=300)
    wall, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    if rec.failed:
        raise RuntimeError(f"recording failed: {rec.failed}")
    return WriteResult(steps, wall, ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime, producer,
                       dir_bytes(path), rec.dropped, cont.stop())


def write_tb(logdir: str, mix: Mix, steps: int, *, rate: float | None = None) -> WriteResult:
    """Record `steps` steps of the mix with a default SummaryWriter."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(logdir)
    cont = Contention()
    ru0, t0, producer = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0.0
    for step in range(steps):
        _pace(t0, step, rate)
        c = time.thread_time()
        emit_tb(w, mix, step)
        producer += time.thread_time() - c
    w.close()
    wall, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return WriteResult(steps, wall, ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime, producer,
                       dir_bytes(logdir), 0, cont.stop())


# ---- tail latency (reader in a spawned process) ------------------------------------------------

def _warm_imports() -> None:
    """Import what the first query would import lazily (pyarrow pulls in pandas on its first
    pa.array() / to_numpy(), ~0.5 s here), so one-off module imports are not timed as store work."""
    import pandas  # noqa: F401
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401
    import pyarrow.ipc  # noqa: F401

    pa.array([0]).to_numpy()


def _tail_ours(path: str, poll_s: float, ready: Any, stop: Any, out: Any) -> None:
    _warm_imports()
    while True:
        try:
            reader = open_run(path)
            break
        except RunError:
            time.sleep(poll_s)
    cursor = reader.cursor("scalar")
    ready.set()
    seen: set[int] = set()
    lat: list[float] = []
    polls, busy = 0, 0.0
    while True:
        last = stop.is_set()
        t = time.perf_counter()
        table = reader.read_new(cursor, columns=["step", "wall_time"])
        now = time.time()
        polls += 1
        if table.num_rows:
            steps = table.column("step").to_numpy()
            walls = table.column("wall_time").to_numpy()
            order = np.lexsort((walls, steps))           # earliest row of each step first
            steps, walls = steps[order], walls[order]
            first = np.ones(len(steps), bool)
            first[1:] = steps[1:] != steps[:-1]
            for s, wt in zip(steps[first].tolist(), walls[first].tolist()):
                if s not in seen:
                    seen.add(s)
                    lat.append(now - wt)
        busy += time.perf_counter() - t
        if last:
            break
        time.sleep(max(0.0, poll_s - (time.perf_counter() - t)))
    out.put({"lat": lat, "steps": len(seen), "polls": polls, "busy_s": busy})


def _tail_tb(logdir: str, poll_s: float, ready: Any, stop: Any, out: Any) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    _warm_imports()
    ready.set()
    files: list[str] = []
    while not files:
        files = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
        if stop.is_set():
            break
        time.sleep(poll_s)
    loader = EventFileLoader(files[0]) if files else None
    seen: set[int] = set()
    lat: list[float] = []
    polls, busy = 0, 0.0
    while loader is not None:
        last = stop.is_set()
        t = time.perf_counter()
        for ev in loader.Load():
            if ev.step not in seen and ev.HasField("summary") and ev.summary.value \
                    and ev.summary.value[0].tag == FIRST_SCALAR:
                seen.add(ev.step)
                lat.append(time.time() - ev.wall_time)
        polls += 1
        busy += time.perf_counter() - t
        if last:
            break
        time.sleep(max(0.0, poll_s - (time.perf_counter() - t)))
    out.put({"lat": lat, "steps": len(seen), "polls": polls, "busy_s": busy})


def measure_latency(which: str, path: str, mix: Mix, steps: int, rate: float, poll_s: float,
                    codec: str = "lz4") -> tuple[dict[str, Any], WriteResult]:
    """Paced writer here, tailing reader in a spawned process; returns the reader's findings."""
    ctx = mp.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    target = _tail_ours if which == "ours" else _tail_tb
    proc = ctx.Process(target=target, args=(path, poll_s, ready, stop, out), daemon=True)
    proc.start()

    def started() -> None:        # the run exists: wait until the reader is attached
        if not ready.wait(120):
            raise RuntimeError("tail reader did not start")

    if which == "ours":
        res = write_ours(path, mix, steps, codec=codec, rate=rate, started=started)
    else:
        started()
        res = write_tb(path, mix, steps, rate=rate)
    time.sleep(0.2)               # let the last poll see the final flush
    stop.set()
    result = out.get(timeout=600)
    proc.join(60)
    return result, res


# ---- loading and fetching (fresh processes) ----------------------------------------------------

def _in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_call_into, args=(out, fn, args), daemon=True)
    proc.start()
    ok, value = out.get(timeout=900)
    proc.join(60)
    if not ok:
        raise RuntimeError(value)
    return value


def _call_into(out: Any, fn: Callable[..., Any], args: tuple) -> None:
    try:
        _warm_imports()
        out.put((True, fn(*args)))
    except BaseException as exc:  # report, do not hang the parent
        import traceback
        out.put((False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _load_scalars_ours(path: str) -> dict[str, Any]:
    c0, t0 = time.process_time(), time.perf_counter()
    reader = open_run(path)
    t1 = time.perf_counter()
    df = reader.to_pandas("scalar")
    t2, c2 = time.perf_counter(), time.process_time()
    return {"total_s": t2 - t0, "open_s": t1 - t0, "read_s": t2 - t1, "cpu_s": c2 - c0, "rows": len(df),
            "steps": int(df["step"].nunique()), "frames": reader.kinds()["scalar"]["frames"],
            "all_frames": sum(k["frames"] for k in reader.kinds().values())}


def _fetch_maps_ours(path: str, n: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    c0, t0 = time.process_time(), time.perf_counter()
    reader = open_run(path)
    t1 = time.perf_counter()
    map_steps = reader.blob_steps()
    t2 = time.perf_counter()
    step, layer = rng.choice(map_steps), rng.randrange(LAYERS)
    first = reader.attention_map(step=step, layer=layer)
    t3, c3 = time.perf_counter(), time.process_time()
    warm = []
    for _ in range(n):
        s, l = rng.choice(map_steps), rng.randrange(LAYERS)
        t = time.perf_counter()
        reader.attention_map(step=s, layer=l)
        warm.append(time.perf_counter() - t)
    return {"cold_s": t3 - t0, "cold_cpu_s": c3 - c0, "open_s": t1 - t0, "index_s": t2 - t1,
            "first_fetch_s": t3 - t2, "warm": warm, "map_steps": len(map_steps), "check": (step, layer, first),
            "frames": reader.kinds()["attention_map"]["frames"]}


def evict_from_page_cache(path: str) -> float:
    """Write back and drop the page-cache pages of one run's files only (no effect on anything
    else), so the next read comes from the disk; returns seconds spent."""
    t = time.perf_counter()
    for root, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return time.perf_counter() - t


def _tb_load_and_fetch(logdir: str, n: int, seed: int) -> dict[str, Any]:
    import io

    import pandas as pd
    from PIL import Image
    from tensorboard.backend.event_processing import event_accumulator as ea

    def decode(ev: Any) -> np.ndarray:   # RGB PNG grid (8 heads per row, no padding) -> [16, 128, 128]
        img = np.asarray(Image.open(io.BytesIO(ev.encoded_image_string)))
        img = img[..., 0] if img.ndim == 3 else img
        cols = img.shape[1] // TOKENS
        heads = [img[(h // cols) * TOKENS:(h // cols + 1) * TOKENS, (h % cols) * TOKENS:(h % cols + 1) * TOKENS]
                 for h in range(HEADS)]
        return (np.stack(heads).astype(np.float32) / 255.0).astype(np.float16)

    rng = random.Random(seed)
    c0, t0 = time.process_time(), time.perf_counter()
    acc = ea.EventAccumulator(logdir, size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.HISTOGRAMS: 1,
                                                     ea.COMPRESSED_HISTOGRAMS: 1, ea.TENSORS: 1})
    acc.Reload()
    t1 = time.perf_counter()
    frames = []
    for tag in acc.Tags()["scalars"]:
        evs = acc.Scalars(tag)
        frames.append(pd.DataFrame({"step": [e.step for e in evs], "wall_time": [e.wall_time for e in evs],
                                    "name": tag, "value": [e.value for e in evs]}))
    df = pd.concat(frames, ignore_index=True)
    df["name"] = df["name"].astype("category")
    t2, c2 = time.perf_counter(), time.process_time()
    map_steps = sorted({e.step for e in acc.Images("attn/layer00")})

    def fetch(step: int, layer: int) -> np.ndarray:
        for ev in acc.Images(f"attn/layer{layer:02d}"):
            if ev.step == step:
                return decode(ev)
        raise KeyError((step, layer))

    t3 = time.perf_counter()
    step, layer = rng.choice(map_steps), rng.randrange(LAYERS)
    first = fetch(step, layer)
    t4 = time.perf_counter()
    warm = []
    for _ in range(n):
        s, l = rng.choice(map_steps), rng.randrange(LAYERS)
        t = time.perf_counter()
        fetch(s, l)
        warm.append(time.perf_counter() - t)
    return {"reload_s": t1 - t0, "df_s": t2 - t1, "load_s": t2 - t0, "cpu_s": c2 - c0, "rows": len(df),
            "steps": int(df["step"].nunique()), "cold_fetch_s": (t1 - t0) + (t4 - t3), "warm": warm,
            "map_steps": len(map_steps), "check": (step, layer, first)}


# ---- reporting ---------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _print_write(who: str, codec: str, r: WriteResult) -> None:
    print(f"  {who}: {r.steps} steps in {r.wall_s:.2f} s = {r.steps_s:,.1f} steps/s; user CPU {r.cpu_ms:.3f} ms/step "
          f"(sys {r.sys_ms:.3f}); caller thread {r.producer_s / r.steps * 1e3:.3f} ms/step; "
          f"{r.bytes_step:,.0f} bytes/step; dropped {r.dropped}; codec {codec}; "
          f"other processes busy {r.others_cpus:.1f} CPUs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000, help="steps of our 10k-step runs (default 10000)")
    ap.add_argument("--tb-steps", type=int, default=300, help="steps of TensorBoard's flat-out run (default 300)")
    ap.add_argument("--tb-lat-steps", type=int, default=60,
                    help="steps of TensorBoard's paced latency run (default 60)")
    ap.add_argument("--lat-steps", type=int, default=1000, help="steps of our paced latency run (default 1000)")
    ap.add_argument("--rate", type=float, default=100.0, help="paced rate of our latency run, steps/s")
    ap.add_argument("--poll-ms", type=float, default=5.0, help="tail reader poll interval")
    ap.add_argument("--codec-steps", type=int, default=1000,
                    help="steps of the extra blob-codec runs (default 1000)")
    ap.add_argument("--flush-every", type=int, default=100, help="flat-out run: wait for the writer every N steps")
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process repeats of the scalar load")
    ap.add_argument("--fetches", type=int, default=200, help="warm attention-map fetches")
    ap.add_argument("--codec", default="lz4", choices=["none", "lz4", "zstd"], help="blob codec of the main runs")
    ap.add_argument("--no-tb", action="store_true", help="skip TensorBoard")
    ap.add_argument("--no-per-step", action="store_true", help="skip the per-step-framing run")
    ap.add_argument("--no-disk-cold", action="store_true", help="skip the fetches after evicting the run from the page cache")
    ap.add_argument("--tmpdir", default=None, help="where to write runs (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--quick", action="store_true", help="small smoke run (~1 min)")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.tb_steps, args.tb_lat_steps = min(args.steps, 2000), min(args.tb_steps, 30), \
            min(args.tb_lat_steps, 20)
        args.lat_steps, args.codec_steps, args.repeats = min(args.lat_steps, 300), min(args.codec_steps, 300), 1
        args.fetches = min(args.fetches, 50)

    root = tempfile.mkdtemp(prefix="store_bench-", dir=args.tmpdir)
    try:
        return _run(args, root)
    finally:
        if args.keep:
            print(f"\nkept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _measure_reads(args: argparse.Namespace, label: str, path: str, mix: Mix, disk_cold: bool) -> dict[str, Any]:
    """5 and 6 on one of our runs: scalar load (fresh processes) and attention-map fetches."""
    res = [_in_fresh_process(_load_scalars_ours, path) for _ in range(args.repeats)]
    med = statistics.median(r["total_s"] for r in res)
    r0 = res[0]
    print(f"  [5] scalar load: {med:.3f} s wall (CPU {statistics.median(r['cpu_s'] for r in res):.3f} s; open+scan "
          f"{statistics.median(r['open_s'] for r in res):.3f} s of {r0['all_frames']} frames, read+to_pandas "
          f"{statistics.median(r['read_s'] for r in res):.3f} s) for {r0['steps']} steps / {r0['rows']:,} rows in "
          f"{r0['frames']} frames -> {r0['steps'] / med:,.0f} steps/s, median of {len(res)} fresh processes  "
          f"[{verdict(med <= BUDGET['load_s'])} <= {BUDGET['load_s']} s]")
    out: dict[str, Any] = {"load_s": med}
    fr = _in_fresh_process(_fetch_maps_ours, path, args.fetches, 2)
    step, layer, arr = fr["check"]
    ok = np.array_equal(arr, mix.maps[layer])
    med_f, p95_f = pct(fr["warm"], 50) * 1e3, pct(fr["warm"], 95) * 1e3
    out.update(cold_s=fr["cold_s"], fetch_ms=med_f, fetch_p95_ms=p95_f)
    print(f"  [6] map fetch, page cache warm: cold reader {fr['cold_s'] * 1e3:.1f} ms (open {fr['open_s'] * 1e3:.1f} + "
          f"index of {fr['frames']} frames / {fr['map_steps']} map steps {fr['index_s'] * 1e3:.1f} + fetch "
          f"{fr['first_fetch_s'] * 1e3:.1f}); warm reader median {med_f:.2f} ms, p95 {p95_f:.2f} ms over "
          f"{len(fr['warm'])} random (step, layer); bytes identical to the source: {ok}  "
          f"[{verdict(med_f <= BUDGET['fetch_ms'])} <= {BUDGET['fetch_ms']} ms]")
    if disk_cold:
        ev = evict_from_page_cache(path)
        fr = _in_fresh_process(_fetch_maps_ours, path, min(args.fetches, 100), 3)
        med_d, p95_d = pct(fr["warm"], 50) * 1e3, pct(fr["warm"], 95) * 1e3
        out.update(disk_cold_s=fr["cold_s"], disk_fetch_ms=med_d)
        print(f"  [6] map fetch, run evicted from the page cache ({ev:.1f} s to write back + evict): cold reader "
              f"{fr['cold_s'] * 1e3:.1f} ms (open {fr['open_s'] * 1e3:.1f} + index {fr['index_s'] * 1e3:.1f} + fetch "
              f"{fr['first_fetch_s'] * 1e3:.1f}); warm reader median {med_d:.2f} ms, p95 {p95_d:.2f} ms over "
              f"{len(fr['warm'])} (reads from disk)")
    return out


def _run(args: argparse.Namespace, root: str) -> int:
    import inspector as _insp
    import pyarrow as pa

    t_start, whole = time.perf_counter(), Contention()
    _warm_imports()     # one-off lazy imports (pyarrow -> pandas) are not store work
    mix = make_mix(0, tb=not args.no_tb)
    raw_map = sum(m.nbytes for m in mix.maps) / MAP_EVERY
    print("store_bench: run store vs torch.utils.tensorboard.SummaryWriter")
    print(f"  inspector from {Path(_insp.__file__).parent}; pyarrow {pa.__version__}; python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; runs under {root}")
    print(f"  mix/step: {N_SCALARS} scalars, {N_HISTS} histograms x {BINS} bins, expert_load {LAYERS} x {EXPERTS}; "
          f"every {MAP_EVERY}th step {LAYERS} maps fp16 [{HEADS},{TOKENS},{TOKENS}] "
          f"(= {raw_map / 1e6:.2f} MB/step of raw map bytes on average)")
    budget_rows: list[tuple[str, str, str, str]] = []

    # A. our flat-out run: 1-3, then 5-6 on it while it is in the page cache, then delete ---------
    print(f"\nA. our store, flat-out, {args.steps} steps (blob codec {args.codec}; waits for the writer every "
          f"{args.flush_every} steps, so a frame holds up to {args.flush_every} steps)")
    main_run = os.path.join(root, "ours-flat")
    ours = write_ours(main_run, mix, args.steps, codec=args.codec, flush_every=args.flush_every)
    _print_write("[1-3] ours", args.codec, ours)
    flat = _measure_reads(args, "flat-out", main_run, mix, not args.no_disk_cold)
    shutil.rmtree(main_run, ignore_errors=True)

    # B. blob codecs ------------------------------------------------------------------------------
    codec_rows = [(args.codec, ours)]
    for codec in [c for c in ("none", "lz4", "zstd") if c != args.codec]:
        path = os.path.join(root, f"ours-{codec}")
        codec_rows.append((codec, write_ours(path, mix, args.codec_steps, codec=codec, flush_every=args.flush_every)))
        shutil.rmtree(path, ignore_errors=True)
    print(f"\nB. blob codec trade-off (default codec: lz4; {args.codec} row = run A, {args.steps} steps; "
          f"others {args.codec_steps} steps)")
    print(f"  {'codec':6} {'steps/s':>9} {'user ms/step':>13} {'sys ms/step':>12} {'bytes/step':>12} {'dropped':>8} "
          f"{'others busy':>12}")
    for codec, r in codec_rows:
        print(f"  {codec:6} {r.steps_s:9.0f} {r.cpu_ms:13.3f} {r.sys_ms:12.3f} {r.bytes_step:12,.0f} {r.dropped:8} "
              f"{r.others_cpus:10.1f}  ")

    # C. per-step framing ---------------------------------------------------------------------------
    per = None
    if not args.no_per_step:
        print(f"\nC. our store, per-step framing, {args.steps} steps (one frame per kind per step: a training "
              "loop slower than the 20 ms coalescing window)")
        path = os.path.join(root, "ours-per-step")
        ps = write_ours(path, mix, args.steps, codec=args.codec, per_step_frames=True)
        print(f"  written at {ps.steps_s:.0f} steps/s with a flush per step; user CPU {ps.cpu_ms:.3f} ms/step; "
              f"{ps.bytes_step:,.0f} bytes/step; dropped {ps.dropped}")
        per = _measure_reads(args, "per-step", path, mix, False)
        shutil.rmtree(path, ignore_errors=True)

    # D. our tail latency ---------------------------------------------------------------------------
    print(f"\nD. our store, tail latency: writer paced at {args.rate:g} steps/s, reader in a spawned process "
          f"polling read_new every {args.poll_ms:g} ms")
    poll = args.poll_ms / 1e3
    lat, lat_w = measure_latency("ours", os.path.join(root, "ours-tail"), mix, args.lat_steps, args.rate, poll,
                                 args.codec)
    shutil.rmtree(os.path.join(root, "ours-tail"), ignore_errors=True)
    ours_p50, ours_p95 = pct(lat["lat"], 50) * 1e3, pct(lat["lat"], 95) * 1e3
    print(f"  [4] achieved {lat_w.steps_s:.0f} steps/s; {lat['steps']}/{args.lat_steps} steps seen; p50 "
          f"{ours_p50:.1f} ms, p95 {ours_p95:.1f} ms, max {max(lat['lat']) * 1e3:.1f} ms; writer user CPU "
          f"{lat_w.cpu_ms:.3f} ms/step at this rate; reader {lat['polls']} polls, busy "
          f"{lat['busy_s'] / max(lat['polls'], 1) * 1e3:.2f} ms/poll; others busy {lat_w.others_cpus:.1f} CPUs "
          f"(incl. the reader)  [{verdict(ours_p95 <= BUDGET['p95_ms'])} <= {BUDGET['p95_ms']:g} ms]")

    # E. TensorBoard --------------------------------------------------------------------------------
    tb = tbl = None
    tb_p50 = tb_p95 = float("nan")
    if not args.no_tb:
        print(f"\nE. TensorBoard SummaryWriter (defaults: max_queue=10, flush_secs=120), {args.tb_steps} steps flat-out")
        tb_dir = os.path.join(root, "tb-flat")
        tb = write_tb(tb_dir, mix, args.tb_steps)
        _print_write("[1-3] tensorboard", "png", tb)
        tbl = _in_fresh_process(_tb_load_and_fetch, tb_dir, min(args.fetches, 50), 1)
        tb_10k = tbl["load_s"] / max(tbl["steps"], 1) * args.steps
        print(f"  [5] EventAccumulator(size_guidance scalars=0, images=0).Reload() {tbl['reload_s']:.2f} s + DataFrame "
              f"{tbl['df_s']:.3f} s = {tbl['load_s']:.2f} s (CPU {tbl['cpu_s']:.2f} s) for {tbl['steps']} steps / "
              f"{tbl['rows']:,} rows -> {tbl['steps'] / tbl['load_s']:.1f} steps/s; EXTRAPOLATED linearly to "
              f"{args.steps} steps: {tb_10k:,.0f} s (one fresh process; a Reload reads every record, maps included)")
        _, layer, arr = tbl["check"]
        err = float(np.abs(arr.astype(np.float32) - mix.maps[layer].astype(np.float32)).max())
        tmed, tp95 = pct(tbl["warm"], 50) * 1e3, pct(tbl["warm"], 95) * 1e3
        print(f"  [6] map fetch ({tbl['map_steps']} map steps): cold {tbl['cold_fetch_s']:.2f} s (the Reload above + "
              f"first PNG decode); warm median {tmed:.2f} ms, p95 {tp95:.2f} ms over {len(tbl['warm'])} (PNG decode; "
              f"8-bit, max abs error {err:.4f})")
        shutil.rmtree(os.path.join(root, "tb-flat"), ignore_errors=True)
        tb_rate = min(args.rate, tb.steps_s / 2)
        tlat, tlat_w = measure_latency("tb", os.path.join(root, "tb-tail"), mix, args.tb_lat_steps, tb_rate, poll)
        shutil.rmtree(os.path.join(root, "tb-tail"), ignore_errors=True)
        tb_p50, tb_p95 = pct(tlat["lat"], 50) * 1e3, pct(tlat["lat"], 95) * 1e3
        print(f"  [4] tail latency, writer paced at {tb_rate:.2f} steps/s (half its flat-out rate; achieved "
              f"{tlat_w.steps_s:.2f}), EventFileLoader polled every {args.poll_ms:g} ms: {tlat['steps']}/"
              f"{args.tb_lat_steps} steps seen; p50 {tb_p50:.1f} ms, p95 {tb_p95:.1f} ms, max "
              f"{max(tlat['lat'] or [float('nan')]) * 1e3:.1f} ms; reader busy "
              f"{tlat['busy_s'] / max(tlat['polls'], 1) * 1e3:.2f} ms/poll")

    # budget + comparison ---------------------------------------------------------------------------
    budget_rows += [
        (f"[1] write steps/s, flat-out ({args.codec})", f"{ours.steps_s:,.0f}", f">= {BUDGET['steps_s']:,.0f}",
         verdict(ours.steps_s >= BUDGET["steps_s"])),
        ("[2] writer user CPU ms/step, flat-out", f"{ours.cpu_ms:.3f}", f"<= {BUDGET['cpu_ms']}",
         verdict(ours.cpu_ms <= BUDGET["cpu_ms"])),
        (f"[4] tail latency p95 at {args.rate:g} steps/s", f"{ours_p95:.1f} ms", f"<= {BUDGET['p95_ms']:g} ms",
         verdict(ours_p95 <= BUDGET["p95_ms"])),
    ]
    for label, r in [("flat-out run", flat), ("per-step framing", per)]:
        if r is None:
            continue
        budget_rows.append((f"[5] {args.steps}-step scalar load ({label})", f"{r['load_s']:.3f} s",
                            f"<= {BUDGET['load_s']} s", verdict(r["load_s"] <= BUDGET["load_s"])))
        budget_rows.append((f"[6] map fetch, warm median ({label})", f"{r['fetch_ms']:.2f} ms",
                            f"<= {BUDGET['fetch_ms']} ms", verdict(r["fetch_ms"] <= BUDGET["fetch_ms"])))
    print(f"\nBUDGET (our store; wall-clock figures are inflated when other processes are busy: "
          f"they kept {whole.stop():.1f} of {os.cpu_count()} CPUs busy on average during this benchmark)")
    for row in budget_rows:
        print(f"  {row[0]:52} {row[1]:>12}  {row[2]:>10}  {row[3]}")

    if tb is not None and tbl is not None:
        reads = per if per is not None else flat
        label = "per-step framing" if per is not None else "flat-out run"
        tb_10k = tbl["load_s"] / max(tbl["steps"], 1) * args.steps
        tmed = pct(tbl["warm"], 50) * 1e3

        def better(a: float, b: float, higher: bool) -> str:   # how many times ours is better than TB
            if not (a > 0 and b > 0):
                return "n/a"
            x = a / b if higher else b / a
            return f"{x:,.1f}x better" if x >= 1 else f"{1 / x:,.1f}x worse"

        cmp_rows = [
            ("[1] write steps/s", f"{ours.steps_s:,.0f}", f"{tb.steps_s:,.2f}", better(ours.steps_s, tb.steps_s, True)),
            ("[2] writer user CPU ms/step", f"{ours.cpu_ms:.3f}", f"{tb.cpu_ms:.1f}", better(ours.cpu_ms, tb.cpu_ms, False)),
            ("    of it on the training loop's thread, ms/step", f"{ours.producer_s / ours.steps * 1e3:.3f}",
             f"{tb.producer_s / tb.steps * 1e3:.1f}", better(ours.producer_s, tb.producer_s / tb.steps * ours.steps, False)),
            ("[3] bytes/step on disk", f"{ours.bytes_step:,.0f}", f"{tb.bytes_step:,.0f}",
             better(ours.bytes_step, tb.bytes_step, False)),
            ("[4] tail latency p50 ms", f"{ours_p50:.1f}", f"{tb_p50:.1f}", better(ours_p50, tb_p50, False)),
            ("[4] tail latency p95 ms", f"{ours_p95:.1f}", f"{tb_p95:.1f}", better(ours_p95, tb_p95, False)),
            (f"[5] scalar load {args.steps} steps, s (TB extrapolated)", f"{reads['load_s']:.3f}", f"{tb_10k:,.1f}",
             better(reads["load_s"], tb_10k, False)),
            ("[6] map fetch, cold reader, ms", f"{reads['cold_s'] * 1e3:.1f}", f"{tbl['cold_fetch_s'] * 1e3:,.0f}",
             better(reads["cold_s"], tbl["cold_fetch_s"], False)),
            ("[6] map fetch, warm median, ms", f"{reads['fetch_ms']:.2f}", f"{tmed:.2f}",
             better(reads["fetch_ms"], tmed, False)),
        ]
        print(f"\nOURS vs TENSORBOARD (same mix; ours {args.steps} steps flat-out, {args.lat_steps} paced at "
              f"{args.rate:g}/s, reads on the {label} run; TensorBoard {args.tb_steps} steps flat-out, "
              f"{args.tb_lat_steps} paced)")
        print(f"  {'metric':52} {'ours':>12} {'tensorboard':>12}  ratio")
        for row in cmp_rows:
            print(f"  {row[0]:52} {row[1]:>12} {row[2]:>12}  {row[3]}")
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s; load average now {os.getloadavg()[0]:.2f}")
    return 0 if all(r[3] == "PASS" for r in budget_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
