"""A seeded fuzz harness for the run-store reader, shared by `tests/store/test_fuzz.py` and
`benchmarks/fuzz_store.py`.

Base runs are recorded once with the real Recorder (`prepare`) and read whole to get the oracle:
the rows of every kind (a multiset of canonical row texts, with the rank) and the bytes of every
blob. A case is `FAMILY:SEED`: a worker subprocess copies a base, damages the copy with that family
of `tests.store.fuzz_mutations` driven by `random.Random("FAMILY:SEED")`, reads it through every
public reader API and the CLI, and compares what came back with the oracle. Workers are
long-lived, one per core, run under an address-space limit and never import torch; one that dies
by a signal or overruns the per-case timeout is replaced.

Columns of the table, counted in cases: uncaught (an exception other than a RunError escaped a
public API, or the CLI), crashed (the worker died), hung (timeout), wrong rows (a row not in the
pristine multiset, or more often than there; a blob whose bytes differ), loss unreported (rows or
blobs missing, yet open_run raised no RunError, `problems` holds nothing the pristine run did not,
and a cleanly closed base still reads as "finished"; judged only in cases without an uncaught
exception, and not for damage an unclosed run cannot tell from an earlier crash: a cut exactly at a
frame boundary, whole frames deleted, an emptied last segment).

    python -m tests.store.fuzz_lib worker WORKDIR SCRATCH MEM_BYTES    # what the pool starts
"""
from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import importlib.abc
import io
import json
import os
import pickle
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[2]
BASES = {"closed": "lz4", "crashed": "none", "resumed": "zstd"}
"""Base runs and their blob codec: closed cleanly; left unclosed (os._exit); crashed then resumed and closed."""
CLOSED_BASES = {"closed", "resumed"}
STEPS, RANKS, SEGMENT_BYTES = 24, 2, 12 << 10
COLUMNS = ("tried", "uncaught", "crashed", "hung", "wrong rows", "loss unreported")
DEFAULT_TIMEOUT_S = 20.0
DEFAULT_MEM_BYTES = 3 << 30
AGE_S = 3600.0
"""Every file of a case is dated this long ago: an unclosed run reads as crashed, not live."""


class HarnessError(RuntimeError):
    """The harness itself failed (bases could not be recorded, a worker could not start)."""


# ---- base runs (run in a child: `python -m tests.store.fuzz_lib record NAME DIR [PHASE]`) -------

def _write_step(rec: Any, rank: int, step: int) -> None:
    """One step of every recorded kind; values depend only on (rank, step)."""
    import numpy as np

    rng = np.random.default_rng(1000 * rank + step)
    rec.step = step
    loss = float("nan") if step == 17 else 4.0 / (1 + step) + 0.01 * rank
    rec.scalars({"loss": loss, "lr": 1e-3 * min(1, (step + 1) / 5), "grad_norm/global": 1.0 + rng.random(),
                 "λ/ünïcode": float(step)}, step=step)
    rec.submit("timing", {"name": ["model", "model", "optimizer", "step"],
                          "phase": ["forward", "backward", "optimizer", "total"],
                          "ms": (rng.random(4) * 10 + [3, 5, 1, 10]).tolist()}, 4, step=step)
    if step % 4 == 0:
        rec.histograms(["act/a", "act/b"], rng.integers(0, 50, (2, 16)), [-1.0, -2.0], [1.0, 2.0], step=step)
        for layer in range(2):
            probs = rng.random((2, 8, 8)) * np.tril(np.ones((8, 8)))
            rec.attention_map(f"layers.{layer}.attn", probs / probs.sum(-1, keepdims=True), layer=layer,
                              heads=[0, 1], tokens=[f"t{i}" for i in range(8)], step=step)
    if step % 6 == 0:
        counts = rng.integers(0, 100, (2, 4))
        rec.submit("expert_load", {"name": ["layers.0.router", "layers.1.router"], "layer": [0, 1],
                                   "counts": counts, "imbalance": (counts.max(1) / counts.mean(1)).tolist(),
                                   "cv": [0.1, 0.2], "router_entropy": [1.0, 1.1], "dropped": [0, 1],
                                   "aux_loss": [0.01, 0.02], "bias": [[0.0] * 4] * 2}, 2, step=step)
    if step in (7, 15):
        rec.anomaly("loss_spike", f"loss spike at step {step} ⚠", module="layers.0", step=step, value=9.5)
    if step % 8 == 0:
        rec.submit("system", {"device": "host", "cpu_percent": 50.0 + rank, "rss": 1e9}, 1, step=step)


def _open_recorder(run: Path, rank: int, codec: str) -> Any:
    from inspector.store.recorder import Recorder

    return Recorder(run, rank=rank, world_size=RANKS, name=f"fuzz-{run.name}", config={"fuzz": True},
                    segment_bytes=SEGMENT_BYTES, blob_codec=codec, heartbeat_s=3600.0, coalesce_s=0.5)


def record_base(name: str, run: Path, phase: str = "") -> None:
    """Record base `name` (in this process, which may end by os._exit to leave it unclosed).

    One flush per step makes one frame per kind per step, so a seed finds the same frames again.
    """
    steps = {"closed": range(STEPS), "crashed": range(STEPS), "resumed": range(14) if phase == "1"
             else range(9, STEPS)}[name]
    recorders = []
    for rank in range(RANKS):
        rec = _open_recorder(run, rank, BASES[name])
        for step in steps:
            _write_step(rec, rank, step)
            if not rec.flush():
                raise HarnessError(f"flush failed recording {name}: {rec.failed}")
        recorders.append(rec)
    if name == "crashed" or phase == "1":
        os._exit(0)          # no close: no closed.json, writer.json still says "writing"
    for rec in recorders:
        rec.close()


def age_tree(path: Path, when: float) -> None:
    """Date every entry under `path` (not following symlinks) at `when`."""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                os.utime(os.path.join(dirpath, name), (when, when), follow_symlinks=False)
    with contextlib.suppress(OSError):
        os.utime(path, (when, when))


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _module_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.store.fuzz_lib", *args]


def prepare(workdir: Path) -> Path:
    """Record the base runs and their oracle under `workdir` once (kept and reused); returns workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    bases, oracle = workdir / "bases", workdir / "oracle.pkl"
    if oracle.exists():
        return workdir
    shutil.rmtree(bases, ignore_errors=True)
    jobs = [[("closed", "")], [("crashed", "")], [("resumed", "1"), ("resumed", "2")]]
    procs = [subprocess.Popen(["/bin/sh", "-c", " && ".join(
        subprocess.list2cmdline(_module_cmd("record", n, str(bases / n), p)) for n, p in job)],
        cwd=ROOT, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for job in jobs]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        if proc.returncode:
            raise HarnessError(f"recording a base run failed:\n{out}")
    for name in BASES:
        age_tree(bases / name, time.time() - AGE_S)
    done = subprocess.run(_module_cmd("oracle", str(workdir)), cwd=ROOT, env=_child_env(), capture_output=True,
                          text=True, timeout=300)
    if done.returncode:
        raise HarnessError(f"reading the pristine bases failed:\n{done.stdout}{done.stderr}")
    return workdir


# ---- reading a run through every public API ----------------------------------------------------

MISSING = "\0missing"


def canon_rows(rows: list[dict[str, Any]], columns: Sequence[str], rank: int | None = None) -> list[str]:
    """Rows as comparable texts over `columns` (a missing column is marked, NaN equals NaN)."""
    out = []
    for row in rows:
        if rank is not None:
            row = {**row, "rank": rank}
        out.append(json.dumps([row.get(c, MISSING) for c in columns], default=repr, ensure_ascii=False))
    return out


def digest(array: Any) -> str:
    """A digest of an array's dtype, shape and bytes."""
    head = f"{array.dtype.str}{tuple(array.shape)}".encode()
    return hashlib.blake2b(head + array.tobytes(), digest_size=16).hexdigest()


@dataclass
class Reading:
    """What the public API returned for one run, and what escaped it."""

    open_error: str | None = None
    status: Any = None
    problems: list[str] = field(default_factory=list)
    rows: dict[str, Counter] = field(default_factory=dict)             # read_table, per kind
    subsets: list[tuple[str, str, Counter]] = field(default_factory=list)   # (api, kind, rows): each ⊆ pristine
    fetched: dict[str, str] = field(default_factory=dict)              # canonical index row -> digest
    fetch_errors: list[str] = field(default_factory=list)
    uncaught: list[list[str]] = field(default_factory=list)            # [key, text]
    cli: dict[str, int] = field(default_factory=dict)


class _Api:
    """Calls public APIs, sorting what they raise into RunErrors and uncaught exceptions."""

    def __init__(self, reading: Reading, progress: Callable[[str], None]) -> None:
        from inspector.store.errors import RunError

        self.reading, self.progress, self.run_error = reading, progress, RunError

    def __call__(self, api: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[bool, Any]:
        self.progress(api)
        try:
            return True, fn(*args, **kw)
        except self.run_error as exc:
            return False, exc
        except Exception as exc:   # noqa: BLE001 - the point: anything else escaped a public API
            self.reading.uncaught.append(describe(api, exc))
            return False, None


def describe(api: str, exc: BaseException) -> list[str]:
    """[grouping key, one-line text] of an exception raised by `api`."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/inspector/" in f.filename] or frames[-1:]
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno} in {ours[-1].name}" if ours else "?"
    group = api.split("(")[0]
    msg = " ".join(str(exc).split())[:160]
    key = f"{group}: {type(exc).__name__} at {where.split(':')[0]} in {where.rsplit(' in ', 1)[-1]}"
    return [key, f"{api}: {type(exc).__name__} at {where}: {msg}"]


def read_run(run: Path, progress: Callable[[str], None] = lambda _: None) -> Reading:
    """Read `run` through every public reader API (never raising)."""
    from inspector.store.reader import open_run

    reading = Reading()
    api = _Api(reading, progress)
    ok, reader = api("open_run", open_run, run)
    if not ok:
        reading.open_error = str(reader) if reader is not None else "uncaught"
        return reading
    try:
        _read_all(reader, api, reading)
    finally:
        api("problems", lambda: reading.problems.extend(list(reader.problems)))
        api("close", reader.close)
    return reading


def _read_all(reader: Any, api: _Api, reading: Reading) -> None:
    from inspector.schema import all_kinds

    ok, status = api("status", reader.status)
    reading.status = status if ok else None
    api("refresh", reader.refresh)
    ok, ranks = api("ranks", lambda: list(reader.ranks))
    ranks = ranks if ok else []
    for r in ranks:
        for name in ("rank_status", "rank_info", "closed_info", "last_step", "last_update"):
            api(f"{name}({r})", getattr(reader, name), r)
    api("last_step", reader.last_step)
    api("size_bytes", reader.size_bytes)
    ok, kinds = api("kinds", reader.kinds)
    present = list(kinds) if ok and isinstance(kinds, dict) else []
    specs = {k.name: k for k in all_kinds()}
    for kind in dict.fromkeys([*specs, *present]):
        _read_kind(reader, api, reading, kind, specs.get(kind))
    for spec in specs.values():
        if spec.blob:
            for r in ranks:
                _read_blobs(reader, api, reading, spec, r)


def _rows_of(api: _Api, label: str, table: Any, columns: Sequence[str]) -> Counter:
    """Canonical rows of a returned table; a table Python cannot even convert is uncaught."""
    ok, rows = api(f"to_pylist({label})", lambda: Counter(canon_rows(table.to_pylist(), columns)))
    return rows if ok else Counter()


def _read_kind(reader: Any, api: _Api, reading: Reading, kind: str, spec: Any) -> None:
    columns = [*spec.schema.names, "rank"] if spec else None
    ok, table = api(f"read_table({kind})", reader.read_table, kind)
    if columns:
        reading.rows[kind] = _rows_of(api, f"read_table({kind})", table, columns) if ok else Counter()
    api(f"to_pandas({kind})", reader.to_pandas, kind)
    ok, cur = api(f"cursor({kind})", reader.cursor, kind)
    if ok:
        got: Counter = Counter()
        for refresh in (kind == "scalar", False):     # one rescan of the run is enough
            ok, table = api(f"read_new({kind})", reader.read_new, cur, refresh=refresh)
            if ok and columns:
                got += _rows_of(api, f"read_new({kind})", table, columns)
        reading.subsets.append((f"read_new({kind})", kind, got))
    ok, cur = api(f"cursor({kind}, at_end)", reader.cursor, kind, at_end=True)
    if ok:
        ok, table = api(f"read_new({kind}, at_end)", reader.read_new, cur, refresh=False)
        if ok and columns:
            label = f"read_new({kind}, at_end)"
            reading.subsets.append((label, kind, _rows_of(api, label, table, columns)))
    if kind == "scalar":
        label = "read_table(scalar, steps, names)"
        ok, table = api(label, reader.read_table, kind, steps=(3, 12), names=["loss", "λ/ünïcode"])
        if ok and columns:
            reading.subsets.append((label, kind, _rows_of(api, label, table, columns)))


def _read_blobs(reader: Any, api: _Api, reading: Reading, spec: Any, rank: int) -> None:
    columns = [*spec.schema.names, "rank"]
    ok, steps = api(f"blob_steps({rank})", reader.blob_steps, spec.name, rank)
    listed: Counter = Counter()
    for step in steps if ok else []:
        ok, rows = api(f"blob_rows({rank})", reader.blob_rows, spec.name, step=step, rank=rank)
        if not ok:
            continue
        for row in rows:
            key = canon_rows([row], columns, rank)[0]
            listed[key] += 1
            match = {k: v for k, v in row.items() if k != "step"}
            ok, got = api(f"fetch({rank})", reader.fetch, spec.name, step=step, rank=rank, **match)
            if ok:
                reading.fetched[key] = api("digest", digest, got[0])[1]
            else:
                reading.fetch_errors.append(f"fetch({rank}, step {step}): {got}")
            if spec.name == "attention_map" and isinstance(row.get("layer"), int):
                api(f"attention_map({rank})", reader.attention_map, step=step, layer=row["layer"], rank=rank)
    reading.subsets.append((f"blob_rows({spec.name})", spec.name, listed))


def cli_commands(run: Path, root: Path, out: Path) -> tuple[list[list[str]], list[list[str]]]:
    """The `inspector` commands that read a run: cheap ones (every case) and heavy ones (one a case)."""
    cheap = [["info", str(run)], ["ls", str(root)]]
    heavy = [["summary", str(run), "--width", "120"], ["export", str(run), "--out", str(out / "parquet")],
             ["export", str(run), "--format", "csv", "--out", str(out / "csv"), "--kind", "scalar",
              "--kind", "attention_map", "--steps", "2:14"],
             ["export", str(run), "--format", "tensorboard", "--out", str(out / "tb")]]
    return cheap, heavy


def run_cli(commands: Sequence[list[str]], reading: Reading, progress: Callable[[str], None]) -> None:
    """Run `inspector` subcommands in process, output captured; what escapes main() is uncaught."""
    from inspector.cli import main

    for argv in commands:
        label = f"cli {argv[0]}" + (f" {argv[argv.index('--format') + 1]}" if "--format" in argv else "")
        progress(label)
        sink = io.StringIO()
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                reading.cli[label] = main(argv)
        except BaseException as exc:   # noqa: BLE001 - SystemExit included: main() must return
            reading.uncaught.append(describe(label, exc))


# ---- the oracle and the verdict ----------------------------------------------------------------

@dataclass
class Oracle:
    """The pristine content of one base run."""

    rows: dict[str, Counter]
    blobs: dict[str, str]
    closed: bool
    status: Any
    problems: list[str]


def build_oracle(workdir: Path) -> dict[str, Oracle]:
    """Read every pristine base; HarnessError when one does not read back whole."""
    out = {}
    for name in BASES:
        reading = read_run(workdir / "bases" / name)
        if reading.open_error or reading.uncaught:
            raise HarnessError(f"pristine base {name}: {reading.open_error or reading.uncaught}")
        empty = [k for k in ("scalar", "histogram", "attention_map", "anomaly", "timing", "expert_load", "system")
                 if not reading.rows.get(k)]
        if empty or len(reading.fetched) != sum(reading.rows["attention_map"].values()):
            raise HarnessError(f"pristine base {name}: no rows of {empty} or blobs missing")
        out[name] = Oracle(reading.rows, reading.fetched, name in CLOSED_BASES, reading.status, reading.problems)
    (workdir / "oracle.pkl").write_bytes(pickle.dumps(out))
    return out


def _excess(got: Counter, want: Counter) -> tuple[int, str]:
    extra = got - want
    return sum(extra.values()), (next(iter(extra)) if extra else "")


def verdict(reading: Reading, oracle: Oracle, variant: str, silent_ok: bool = False) -> dict[str, Any]:
    """The wrong-rows and loss findings of one case; `silent_ok`: the damage is indistinguishable from
    an earlier crash of an unclosed run, so a loss needs no report."""
    checks = [(f"read_table({k})", k, got) for k, got in reading.rows.items()] + reading.subsets
    excess = [(api, *_excess(got, oracle.rows.get(kind, Counter()))) for api, kind, got in checks]
    excess = [(api, n, example) for api, n, example in excess if n]
    wrong: list[list[str]] = []
    if excess:
        apis = ", ".join(f"{api}: {n}" for api, n, _ in excess)
        wrong.append([f"rows not in the pristine run [{variant}]",
                      f"rows not in the pristine run ({apis}), e.g. {excess[0][2][:160]}"])
    differ = [k for k, d in reading.fetched.items() if k in oracle.blobs and d != oracle.blobs[k]]
    if differ:
        wrong.append([f"fetch: tensor bytes differ [{variant}]", f"fetch: {len(differ)} tensor(s) differ"])
    lying = [k for k in reading.fetched if k not in oracle.blobs]
    if lying:
        wrong.append([f"fetch: tensor for a row not in the pristine run [{variant}]",
                      f"fetch returned a tensor for {lying[0][:160]}"])
    lost = {k: n for k, want in oracle.rows.items()
            if (n := sum((want - reading.rows.get(k, Counter())).values()))}
    lost_blobs = sum(reading.fetched.get(k) != d for k, d in oracle.blobs.items())
    new_problems = set(reading.problems) - set(oracle.problems)   # a resumed base notes its resume
    reported = (silent_ok or reading.open_error is not None or bool(new_problems)
                or (oracle.closed and isinstance(reading.status, str) and reading.status != "finished"))
    loss = None
    if (lost or lost_blobs) and not reported and not reading.uncaught:   # an uncaught error counts already
        what = ", ".join(f"{k}: {n}" for k, n in sorted(lost.items()))
        loss = [f"lost {'rows' if lost else 'blobs'} unreported [{variant}]",
                f"lost rows ({what or 'none'}) and {lost_blobs} blob(s); no new problem, status {reading.status!r}"
                + (f"; {reading.fetch_errors[0]}" if reading.fetch_errors else "")]
    return {"wrong": wrong, "loss": loss}


def scrub(value: Any, root: Path) -> Any:
    """`value` with the case directory's path shortened to CASE in every string."""
    if isinstance(value, str):
        return value.replace(str(root), "CASE")
    if isinstance(value, list):
        return [scrub(v, root) for v in value]
    if isinstance(value, dict):
        return {k: scrub(v, root) for k, v in value.items()}
    return value


# ---- the worker --------------------------------------------------------------------------------

class _NoTorch(importlib.abc.MetaPathFinder):
    """Makes `import torch` fail in a worker: reading a run must never need it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torch" or name.startswith("torch."):
            raise ImportError("the fuzz worker must not import torch")
        return None


def _reset_peak_rss() -> None:
    """Start measuring this process's peak RSS afresh (Linux: clear_refs 5)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _memory_mb() -> dict[str, int]:
    """Address space now, peak address space of the process, peak RSS since the last reset (MiB)."""
    text = Path("/proc/self/status").read_text()
    return {k: int(v) // 1024 for k, v in re.findall(r"Vm(Size|Peak|HWM):\s+(\d+)", text)}


def damage_copy(spec: str, workdir: Path, root: Path) -> tuple[str, Any]:
    """Copy the base `spec` picks to ROOT/run and damage it; (base, Mutation), or raises CannotMutate
    when the family found nothing to damage in six reproducible tries."""
    from tests.store.fuzz_mutations import FAMILIES, CannotMutate, Ctx

    family = spec.partition(":")[0]
    for attempt in range(6):
        rng = random.Random(spec if attempt == 0 else f"{spec}/{attempt}")
        base = rng.choice(sorted(BASES))
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        shutil.copytree(workdir / "bases" / base, root / "run", symlinks=True)
        try:
            return base, FAMILIES[family](Ctx(rng, root / "run", root, base in CLOSED_BASES))
        except CannotMutate as exc:
            last = exc
    raise last


def run_case(spec: str, workdir: Path, oracles: dict[str, Oracle], scratch: Path,
             progress: Callable[[str], None], mutated: Callable[[dict[str, str]], None], keep: bool = False) -> dict:
    """Damage a copy of a base as `spec` says, read it, and judge what came back."""
    _reset_peak_rss()
    result: dict[str, Any] = {"spec": spec, "family": spec.partition(":")[0], "uncaught": [], "wrong": [],
                              "loss": None, "crashed": None, "hung": None, "harness": None}
    root, run = scratch / "case", scratch / "case" / "run"
    progress("mutate")
    try:
        base, mutation = damage_copy(spec, workdir, root)
    except Exception as exc:   # noqa: BLE001 - a harness problem: reported apart, never as a finding
        result["harness"] = describe("mutate", exc)[1]
        return result
    result.update(base=base, variant=mutation.variant, detail=mutation.detail, silent_ok=mutation.silent_ok)
    mutated({"base": base, "variant": mutation.variant, "detail": mutation.detail})
    age_tree(root, time.time() - AGE_S)
    start = time.perf_counter()
    reading = read_run(run, progress)
    cheap, heavy = cli_commands(run, root, scratch / "export")
    run_cli(cheap + [random.Random(f"{spec}/cli").choice(heavy)], reading, progress)
    result["read_s"] = round(time.perf_counter() - start, 3)
    result.update(verdict(reading, oracles[base], mutation.variant, mutation.silent_ok), uncaught=reading.uncaught,
                  problems=reading.problems[:5], status=repr(reading.status), open_error=reading.open_error,
                  cli=reading.cli)
    if "torch" in sys.modules:
        result["harness"] = "torch was imported"
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(scratch / "export", ignore_errors=True)
    result["memory_mb"] = _memory_mb()
    return scrub(result, root)


def _warm_imports() -> None:
    """Import what the reader and the CLI need before the address-space limit applies."""
    import inspector.cli  # noqa: F401
    import inspector.store.export  # noqa: F401
    import inspector.store.reader  # noqa: F401
    import inspector.store.tensorboard_export  # noqa: F401
    import inspector.summary_report  # noqa: F401
    import inspector.views.summary  # noqa: F401
    import tests.store.fuzz_mutations  # noqa: F401
    with contextlib.suppress(ImportError):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: F401


def worker_main(workdir: Path, scratch: Path, mem_bytes: int, keep: bool) -> None:
    """Serve cases read as JSON lines on stdin; answers go to the original stdout, nothing else does."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
    sys.meta_path.insert(0, _NoTorch())
    faulthandler.enable()
    warnings.simplefilter("ignore")
    os.environ["COLUMNS"] = "120"
    _warm_imports()
    oracles = pickle.loads((workdir / "oracle.pkl").read_bytes())
    resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))

    def send(msg: dict) -> None:
        proto.write(json.dumps(msg, default=repr) + "\n")

    send({"ready": True})
    for line in sys.stdin:
        spec = json.loads(line)["spec"]
        result = run_case(spec, workdir, oracles, scratch, lambda p: send({"p": p}), lambda m: send({"m": m}), keep)
        send({"result": result})


# ---- the pool ----------------------------------------------------------------------------------

def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _fatal_line(log: Path, since: int) -> str:
    """The first 'Fatal Python error' line and innermost frame a dying worker wrote, if any."""
    try:
        with log.open("rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    fatal = next((ln.strip() for ln in text.splitlines() if ln.startswith("Fatal Python error")), "")
    frame = next((ln.strip() for ln in text.splitlines() if ln.strip().startswith("File ")), "")
    return f"{fatal} {frame}".strip()


class _Slot:
    """One worker subprocess, replaced when it dies; driven by one thread."""

    def __init__(self, index: int, workdir: Path, mem_bytes: int, keep: bool) -> None:
        self.scratch = workdir / f"slot-{index}"
        self.log = workdir / f"slot-{index}.log"
        self.cmd = _module_cmd("worker", str(workdir), str(self.scratch), str(mem_bytes), *(["--keep"] if keep else []))
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.deadline: float | None = None
        self.killed = False

    def _start(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         cwd=ROOT, env=_child_env(), text=True, encoding="utf-8", bufsize=1)
        self._arm(120.0)
        line = self.proc.stdout.readline()
        self._arm(None)
        if not line.startswith('{"ready"'):
            self.proc.kill()
            self.proc.wait()
            raise HarnessError(f"a fuzz worker did not start; see {self.log}:\n{self.log.read_text()[-3000:]}")

    def _arm(self, timeout: float | None) -> None:
        with self.lock:
            self.deadline = None if timeout is None else time.monotonic() + timeout
            self.killed = False

    def watch(self) -> None:
        """Kill the worker when it overran its deadline (called from the watching thread)."""
        with self.lock:
            if self.deadline is not None and time.monotonic() > self.deadline and self.proc and not self.killed:
                self.killed = True
                self.proc.kill()

    def _send(self, spec: str) -> None:
        """Hand a case to the worker, starting a new one when there is none or it just died."""
        for _ in range(2):
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            try:
                self.proc.stdin.write(json.dumps({"spec": spec}) + "\n")
                self.proc.stdin.flush()
                return
            except BrokenPipeError:
                self.proc.wait()
                self.proc = None
        raise HarnessError(f"no fuzz worker accepts cases; see {self.log}")

    def run(self, spec: str, timeout: float) -> dict:
        since = self.log.stat().st_size if self.log.exists() else 0
        self._send(spec)
        self._arm(timeout)
        progress, mutation = "start", {}
        for line in self.proc.stdout:
            msg = json.loads(line)
            if "p" in msg:
                progress = msg["p"]
            elif "m" in msg:
                mutation = msg["m"]
            elif "result" in msg:
                self._arm(None)
                return msg["result"]
        return self._died(spec, timeout, progress, mutation, since)

    def _died(self, spec: str, timeout: float, progress: str, mutation: dict, since: int) -> dict:
        with self.lock:
            killed, self.deadline = self.killed, None
        rc = self.proc.wait()
        self.proc = None
        family = spec.partition(":")[0]
        where = progress.split("(")[0]
        result = {"spec": spec, "family": family, "uncaught": [], "wrong": [], "loss": None, "crashed": None,
                  "hung": None, "harness": None, **mutation}
        variant = mutation.get("variant", "?")
        if killed:
            result["hung"] = [f"timeout in {where} [{variant}]", f"no answer in {timeout:g} s; last in {progress}"]
        else:
            how = _signal_name(rc) if rc < 0 else f"exit status {rc}"
            result["crashed"] = [f"{how} in {where} [{variant}]",
                                 f"worker died ({how}) in {progress}: {_fatal_line(self.log, since)}"[:300]]
        return result

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def run_cases(specs: Sequence[str], workdir: Path, *, workers: int = 2, timeout: float = DEFAULT_TIMEOUT_S,
              mem_bytes: int = DEFAULT_MEM_BYTES, keep: bool = False,
              on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every case on a pool of `workers` worker subprocesses; results in `specs` order."""
    pending = iter(enumerate(specs))
    results: list[dict | None] = [None] * len(specs)
    lock = threading.Lock()
    errors: list[BaseException] = []
    slots = [_Slot(i, workdir, mem_bytes, keep) for i in range(max(1, workers))]

    def next_case() -> tuple[int, str] | None:
        with lock:
            return None if errors else next(pending, None)

    def drive(slot: _Slot) -> None:
        try:
            while (item := next_case()) is not None:
                result = slot.run(item[1], timeout)
                results[item[0]] = result
                if on_result:
                    with lock:
                        on_result(result)
        except BaseException as exc:   # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)
        finally:
            slot.stop()

    threads = [threading.Thread(target=drive, args=(s,), daemon=True) for s in slots]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for slot in slots:
            slot.watch()
        time.sleep(0.05)
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def make_specs(n: int, seed: int, families: Sequence[str] | None = None) -> list[str]:
    """`n` case specs spread round-robin over the families."""
    from tests.store.fuzz_mutations import FAMILIES

    fams = list(families or FAMILIES)
    return [f"{fams[i % len(fams)]}:{seed * 1_000_000 + i}" for i in range(n)]


# ---- the table ---------------------------------------------------------------------------------

_CELLS = {"uncaught": "uncaught", "crashed": "crashed", "hung": "hung", "wrong rows": "wrong",
          "loss unreported": "loss"}


def findings(result: dict, column: str) -> list[list[str]]:
    """The [key, text] findings of one result in one column."""
    value = result.get(_CELLS[column])
    if not value:
        return []
    return value if isinstance(value[0], list) else [value]


def tabulate(results: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Per family (and "total"): cases tried and cases with findings in each column."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0))
    for r in results:
        if r.get("harness"):
            continue
        for fam in (r["family"], "total"):
            table[fam]["tried"] += 1
            for col in COLUMNS[1:]:
                table[fam][col] += bool(findings(r, col))
    return dict(table)


def format_table(table: dict[str, dict[str, int]]) -> str:
    """The table as aligned text, families sorted, total last."""
    names = sorted(k for k in table if k != "total") + ["total"]
    width = max(map(len, names + ["family"]))
    lines = [f"{'family':<{width}} | " + " | ".join(COLUMNS)]
    lines.append("-" * len(lines[0]))
    for name in names:
        row = table.get(name, dict.fromkeys(COLUMNS, 0))
        lines.append(f"{name:<{width}} | " + " | ".join(f"{row[c]:>{len(c)}}" for c in COLUMNS))
    return "\n".join(lines)


def distinct_reasons(results: Sequence[dict]) -> dict[tuple[str, str], list[tuple[str, int, str, str]]]:
    """Per (family, column): (reason key, cases, first spec, first text), most frequent first."""
    seen: dict[tuple[str, str], dict[str, list]] = defaultdict(dict)
    for r in results:
        for col in COLUMNS[1:]:
            for key, text in {k: t for k, t in findings(r, col)}.items():
                entry = seen[(r["family"], col)].setdefault(key, [0, r["spec"], text, r.get("detail", "")])
                entry[0] += 1
    return {cell: sorted(((k, n, spec, f"{text} ({detail})" if detail else text)
                          for k, (n, spec, text, detail) in reasons.items()), key=lambda e: -e[1])
            for cell, reasons in sorted(seen.items())}


def format_examples(results: Sequence[dict], per_cell: int = 3) -> str:
    """Up to `per_cell` example cases for each non-zero cell, one per distinct reason first."""
    lines = []
    for (fam, col), reasons in distinct_reasons(results).items():
        lines.append(f"{fam} / {col}:")
        shown: set[str] = set()
        for key, n, spec, text in reasons:
            if spec not in shown and len(shown) < per_cell:
                shown.add(spec)
                lines.append(f"  --only {spec}  ({n} case(s) with this reason): {text}")
    harness = [r for r in results if r.get("harness")]
    if harness:
        lines.append(f"harness problems ({len(harness)} case(s), not counted):")
        lines += [f"  --only {r['spec']}: {r['harness']}" for r in harness[:5]]
    return "\n".join(lines)


def format_reasons(results: Sequence[dict]) -> str:
    """Every distinct reason of each non-zero cell, with its number of cases and one reproducer."""
    lines = []
    for (fam, col), reasons in distinct_reasons(results).items():
        lines.append(f"{fam} / {col}:")
        lines += [f"  {n:5d}  {key}   --only {spec}" for key, n, spec, _ in reasons]
    return "\n".join(lines)


def format_report(results: Sequence[dict], per_cell: int = 3) -> str:
    """The table followed by the examples."""
    return format_table(tabulate(results)) + "\n\n" + format_examples(results, per_cell)


def failures(table: dict[str, dict[str, int]]) -> int:
    """Cells over all families that are not zero (tried excluded)."""
    total = table.get("total", {})
    return sum(total.get(c, 0) for c in COLUMNS[1:])


def _main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "record":
        record_base(argv[1], Path(argv[2]), argv[3] if len(argv) > 3 else "")
    elif cmd == "oracle":
        warnings.simplefilter("ignore")
        oracles = build_oracle(Path(argv[1]))
        for name, o in oracles.items():
            print(name, {k: sum(c.values()) for k, c in o.rows.items() if c}, "blobs", len(o.blobs),
                  "status", o.status, "problems", o.problems)
    elif cmd == "worker":
        worker_main(Path(argv[1]), Path(argv[2]), int(argv[3]), "--keep" in argv)
    else:
        raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    # Run as the importable module, so that what is pickled names tests.store.fuzz_lib, not __main__.
    from tests.store.fuzz_lib import _main as main

    main(sys.argv[1:])
