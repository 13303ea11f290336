"""The Recorder: a bounded queue in front of a writer thread that appends to the run store.

Producers (probes, `log_scalar`, the training loop) call cheap methods that put one *chunk* of
columns on a bounded queue and return at once. A background thread drains the queue, groups chunks
by kind, builds one Arrow batch per kind and appends it as a frame. When the queue is full the
chunk is dropped and counted; the count is recorded every `heartbeat_s` as the scalar
`inspector/dropped_records` (with `inspector/queue_depth` and `inspector/bytes_written`), which is
also the heartbeat a reader uses to tell a live run from a crashed one. No method ever raises into
the caller because of the disk: an OS error stops writing, is warned about once, and everything
after it is counted as dropped.
"""
from __future__ import annotations

import atexit
import logging
import queue
import socket
import sys
import threading
import time
import weakref
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from inspector.distenv import DistEnv
from inspector.schema import (
    ANOMALY,
    ATTENTION_MAP,
    ATTENTION_ROWS,
    HISTOGRAM,
    SCALAR,
    KindSpec,
    RunMeta,
    get_kind,
)
from inspector.store.columns import Chunk, build_batch, resolve
from inspector.store.format import CLOSED_FILE, RUN_META_FILE
from inspector.store.run_dir import write_json_atomic
from inspector.store.writer import RankWriter

log = logging.getLogger("inspector")

_FLUSH, _STOP = object(), object()
BLOB_SLICE_S = 0.010
COALESCE_POLL_S = 0.05   # how often a coalescing writer looks at the queue's depth
_OPEN: "weakref.WeakSet[Recorder]" = weakref.WeakSet()


class Recorder:
    """Records a run of one rank into `run_dir` (see `inspector.store.format`).

    Use as a context manager or call `close()`; open recorders are also flushed and closed at
    interpreter exit. `rank`, `world_size` and `local_rank` default to torchrun's environment;
    `host` (default: this machine's name) is the node the rank reports, for synthetic or relayed runs.
    """

    def __init__(self, run_dir: str | Path, *, name: str | None = None, rank: int | None = None,
                 world_size: int | None = None, local_rank: int | None = None,
                 config: Mapping[str, Any] | None = None, model: Mapping[str, Any] | None = None,
                 probes: Mapping[str, Any] | None = None, queue_size: int = 8192,
                 flush_interval: float = 0.5, coalesce_s: float = 0.2, heartbeat_s: float = 2.0,
                 segment_bytes: int = 64 << 20, blob_codec: str = "lz4", host: str | None = None) -> None:
        env = DistEnv.detect()
        self.rank = env.rank if rank is None else rank
        self.world_size = env.world_size if world_size is None else world_size
        self.local_rank = env.local_rank if local_rank is None else local_rank
        self.run_dir = Path(run_dir)
        self.step = 0
        self.dropped = 0
        self.records_written = 0
        self._max_step = -1
        self._flush_interval = min(flush_interval, 0.5)
        self._coalesce_s = max(0.0, min(coalesce_s, self._flush_interval))
        self._heartbeat_s = heartbeat_s
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._closed = False
        self._failed: str | None = None
        self._warned: set[str] = set()
        self._blobs: deque[tuple] = deque()   # blob items not written yet (see _write)
        self._urgent = threading.Event()      # a flush or close is waiting: stop coalescing
        self._buffers: list[Any] = []         # producers' `hand_over`s (`add_buffer`)

        self._writer: RankWriter | None = None
        self._thread = threading.Thread(target=self._run, name=f"inspector-writer-{self.rank}", daemon=True)
        try:
            self._open(name, model, config, probes, segment_bytes, blob_codec, host)
        except OSError as exc:      # read-only filesystem, no permission, rank taken: train on
            self._fail(exc)
            return
        self._thread.start()
        _OPEN.add(self)

    def _open(self, name: str | None, model: Mapping[str, Any] | None, config: Mapping[str, Any] | None,
              probes: Mapping[str, Any] | None, segment_bytes: int, blob_codec: str, host: str | None = None) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.run_dir / RUN_META_FILE
        if self.rank == 0 and not meta_path.exists():
            meta = RunMeta(name=name or self.run_dir.name, world_size=self.world_size,
                           model=dict(model or {}), config=dict(config or {}), probes=dict(probes or {}),
                           host=socket.gethostname(), command=list(sys.argv))
            write_json_atomic(meta_path, meta.to_dict())
        self._writer = RankWriter(self.run_dir, self.rank, segment_bytes=segment_bytes, blob_codec=blob_codec,
                                  rank_info={"local_rank": self.local_rank, "world_size": self.world_size,
                                             **({"host": host} if host else {})})
        (self._writer.dir / CLOSED_FILE).unlink(missing_ok=True)

    # ---- producer side (any thread) ------------------------------------------------------------

    def submit(self, kind: KindSpec | str, columns: Mapping[str, Any], rows: int = 1,
               step: int | None = None) -> bool:
        """Queue `rows` records of `kind`; False (and counted as dropped) if the queue is full.

        `step` and `wall_time` are filled in unless given in `columns`; see
        `inspector.store.columns` for the accepted value forms.
        """
        spec = get_kind(kind) if isinstance(kind, str) else kind
        return self._put((spec, self._stamp(columns, step), rows, None), rows)

    def submit_blob(self, kind: KindSpec | str, array: Any, columns: Mapping[str, Any],
                    step: int | None = None) -> bool:
        """Queue one tensor of a blob kind (stored in the blob file) with its index columns."""
        spec = get_kind(kind) if isinstance(kind, str) else kind
        if not spec.blob:
            raise ValueError(f"record kind {spec.name!r} is not a blob kind")
        return self._put((spec, self._stamp(columns, step), 1, array), 1)

    def scalar(self, name: str, value: Any, step: int | None = None) -> bool:
        """Record one named number."""
        return self.submit(SCALAR, {"name": name, "value": value}, 1, step)

    def scalars(self, values: Mapping[str, Any], step: int | None = None) -> bool:
        """Record several named numbers at one step."""
        if not values:
            return True
        return self.submit(SCALAR, {"name": list(values), "value": list(values.values())}, len(values), step)

    def histogram(self, name: str, counts: Any, lo: float, hi: float, step: int | None = None,
                  underflow: int = 0, overflow: int = 0) -> bool:
        """Record one histogram with equal-width bins over [lo, hi)."""
        return self.submit(HISTOGRAM, {"name": name, "counts": counts, "lo": lo, "hi": hi,
                                       "underflow": underflow, "overflow": overflow}, 1, step)

    def histograms(self, names: Sequence[str], counts: Any, lo: Any, hi: Any, step: int | None = None,
                   underflow: Any = 0, overflow: Any = 0) -> bool:
        """Record many histograms at once: `counts` is [len(names), bins]."""
        return self.submit(HISTOGRAM, {"name": list(names), "counts": counts, "lo": lo, "hi": hi,
                                       "underflow": underflow, "overflow": overflow}, len(names), step)

    def attention_map(self, name: str, probs: Any, *, layer: int, heads: Sequence[int] | None = None,
                      row_stride: int = 1, tokens: Sequence[str] | None = None, step: int | None = None,
                      row_pool: int = 1, key_pool: int = 1, query_len: int | None = None,
                      key_len: int | None = None) -> bool:
        """Record attention probabilities [heads, rows, keys] of one layer (stored as fp16); `row_pool` /
        `key_pool` > 1: each cell averages a block of a `query_len` × `key_len` attention."""
        return self.submit_blob(ATTENTION_MAP, _Fp16(probs), {
            "name": name, "layer": layer, "row_stride": row_stride,
            "heads": None if heads is None else [list(heads)], "tokens": None if tokens is None else [list(tokens)],
            "row_pool": row_pool, "key_pool": key_pool, "query_len": query_len, "key_len": key_len},
            step)

    def attention_rows(self, name: str, probs: Any, *, layer: int, heads: Sequence[int], positions: Sequence[int],
                       step: int | None = None) -> bool:
        """Record full attention rows [heads, positions, keys] (fp16) of chosen query positions of one layer."""
        return self.submit_blob(ATTENTION_ROWS, _Fp16(probs), {
            "name": name, "layer": layer, "heads": [list(heads)], "positions": [list(positions)]}, step)

    def anomaly(self, kind: str, message: str, *, module: str = "", severity: str = "warning",
                value: float = float("nan"), step: int | None = None) -> bool:
        """Record an anomaly (printing it is the caller's business)."""
        return self.submit(ANOMALY, {"kind": kind, "module": module, "severity": severity,
                                     "value": value, "message": message}, 1, step)

    def add_buffer(self, hand_over: Any) -> None:
        """A producer that keeps rows before submitting them (`RowBuffer`): `hand_over()` submits
        them, called at every `flush()` and at `close()`."""
        self._buffers.append(hand_over)

    def remove_buffer(self, hand_over: Any) -> None:
        """Undo `add_buffer`."""
        if hand_over in self._buffers:
            self._buffers.remove(hand_over)

    def _hand_over_buffers(self) -> None:
        for hand_over in list(self._buffers):
            try:
                hand_over()
            except Exception as exc:  # noqa: BLE001 - a producer's rows must not stop the flush
                self._warn_once(f"buffer:{hand_over!r}", f"inspector: rows kept by a producer were lost: "
                                f"{type(exc).__name__}: {exc}")

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything queued so far is on disk; False on timeout or after a failure."""
        self._hand_over_buffers()
        if self._closed or not self._thread.is_alive():
            return False
        done = threading.Event()
        try:
            self._queue.put((_FLUSH, done, 0, None), timeout=timeout)
        except queue.Full:
            return False
        self._urgent.set()
        return done.wait(timeout) and self._failed is None

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, mark the rank finished (closed.json) and stop the thread."""
        if not self._closed:
            self._hand_over_buffers()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _OPEN.discard(self)
        if not self._thread.is_alive():
            return
        try:
            self._queue.put((_STOP, None, 0, None), timeout=timeout)
        except queue.Full:
            pass
        self._urgent.set()
        self._thread.join(timeout)

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def failed(self) -> str | None:
        """Why writing stopped, or None while it works."""
        return self._failed

    # ---- internals -----------------------------------------------------------------------------

    def _stamp(self, columns: Mapping[str, Any], step: int | None) -> dict[str, Any]:
        cols = dict(columns)
        cols.setdefault("step", self.step if step is None else step)
        cols.setdefault("wall_time", time.time())
        return cols

    def _put(self, item: tuple, rows: int) -> bool:
        if self._closed or self._failed is not None:
            self.dropped += rows
            return False
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += rows
            return False

    def _run(self) -> None:
        last_write = last_beat = time.monotonic()
        stop = False
        while not stop:
            try:
                # with blobs pending, only look for new small records and go on with the blobs
                first = self._queue.get(timeout=0 if self._blobs else min(self._heartbeat_s, self._flush_interval))
            except queue.Empty:
                first = None
            if first is not None and first[0] is not _FLUSH and first[0] is not _STOP and not self._blobs:
                self._coalesce(last_write + self._coalesce_s)
            self._urgent.clear()
            items = [] if first is None else [first]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            now = time.monotonic()
            if now - last_beat >= self._heartbeat_s or any(it[0] is _STOP for it in items):
                items.append((SCALAR, self._stats_columns(), 3, None))
                last_beat = now
            stop = self._write(items)
            last_write = time.monotonic()
        self._finish()

    def _coalesce(self, until: float) -> None:
        """Let records gather until `until`, a flush or close, or a quarter-full queue.

        One write per kind per wake-up: on a machine whose cores the training threads keep busy,
        every wake-up of this thread delays a step, so fewer and larger writes cost training less.
        """
        full = max(1, self._queue.maxsize // 4)
        while not self._urgent.is_set() and self._queue.qsize() < full:
            left = until - time.monotonic()
            if left <= 0:
                return
            self._urgent.wait(min(left, COALESCE_POLL_S))

    def _stats_columns(self) -> dict[str, Any]:
        step = self._max_step if self._max_step >= 0 else self.step  # never ahead of the data
        return {"step": step, "wall_time": time.time(),
                "name": ["inspector/dropped_records", "inspector/queue_depth", "inspector/bytes_written"],
                "value": [float(self.dropped), float(self._queue.qsize()),
                          float(self._writer.bytes_written if self._writer else 0)]}

    def _write(self, items: list[tuple]) -> bool:
        by_kind: dict[KindSpec, list[Chunk]] = defaultdict(list)
        events, stop = [], False
        for spec, cols, rows, blob in items:
            if spec is _FLUSH:
                events.append(cols)
                continue
            if spec is _STOP:
                stop = True
                continue
            if self._failed is not None:
                self.dropped += rows
                continue
            if blob is not None:
                self._blobs.append((spec, cols, rows, blob))
                continue
            by_kind[spec].append((cols, rows))
        # Small records first: they are what a live view is waiting for. Blobs (a step's 24
        # attention maps take 10-25 ms to compress and append) are written in slices of
        # BLOB_SLICE_S between looks at the queue, all of them before a flush or the stop.
        self._write_kinds(by_kind)
        if self._blobs:
            blob_kinds: dict[KindSpec, list[Chunk]] = defaultdict(list)
            until = time.monotonic() + (float("inf") if events or stop else BLOB_SLICE_S)
            while self._blobs and (not blob_kinds or time.monotonic() < until):
                spec, cols, rows, blob = self._blobs.popleft()
                if self._failed is not None:
                    self.dropped += rows
                    continue
                try:
                    cols = {**cols, **self._writer.write_blob(np.asarray(resolve(blob)))}
                except OSError as exc:
                    self._fail(exc)
                    self.dropped += rows
                    continue
                except Exception as exc:  # a bad tensor from a caller must not stop recording
                    if not getattr(exc, "inspector_reported", False):
                        self._warn_once(f"bad-{spec.name}", f"inspector: dropped a {spec.name} record: {exc}")
                    self.dropped += rows
                    continue
                blob_kinds[spec].append((cols, rows))
            self._write_kinds(blob_kinds)
        if self._failed is None:
            try:
                self._writer.checkpoint()
            except OSError as exc:
                self._fail(exc)
        for ev in events:
            ev.set()
        return stop

    def _write_kinds(self, by_kind: dict[KindSpec, list[Chunk]]) -> None:
        for spec, chunks in by_kind.items():
            rows = sum(n for _, n in chunks)
            if self._failed is not None:
                self.dropped += rows
                continue
            batch = self._build(spec, chunks)
            if batch is None:
                continue
            rows = batch.num_rows
            try:
                self._writer.write_table(spec, batch)
                self._writer.check_alive()
            except OSError as exc:
                self._fail(exc)
                self.dropped += rows
                continue
            self.records_written += rows
            steps = batch.column("step")
            if len(steps):
                self._max_step = max(self._max_step, int(np.max(steps.to_numpy())))

    def _build(self, spec: KindSpec, chunks: list[Chunk]) -> pa.RecordBatch | None:
        """One batch of all chunks; a chunk that cannot be built is dropped alone, with a warning."""
        try:
            return build_batch(spec.schema, chunks)
        except Exception:
            pass
        good = []
        for cols, n in chunks:
            try:
                good.append(build_batch(spec.schema, [(cols, n)]))
            except Exception as exc:  # a caller's bad values must not stop recording
                if not getattr(exc, "inspector_reported", False):  # the probe already said it was switched off
                    self._warn_once(f"bad-{spec.name}", f"inspector: dropped {n} {spec.name} record(s): {exc}")
                self.dropped += n
        if not good:
            return None
        return pa.Table.from_batches(good).combine_chunks().to_batches()[0]

    def _fail(self, exc: OSError) -> None:
        if self._failed is None:
            self._failed = f"{type(exc).__name__}: {exc}"
            self._warn_once("oserror", f"inspector: recording to {self.run_dir} stopped ({self._failed}); "
                                       "training goes on, further records are counted as dropped")
            if self._writer is not None:
                self._writer.fail(self._failed, step=self._max_step, dropped=self.dropped)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def _finish(self) -> None:
        # Anything put after the stop marker (racing producers) is dropped and counted.
        while True:
            try:
                spec, cols, rows, _ = self._queue.get_nowait()
            except queue.Empty:
                break
            if spec is _FLUSH:
                cols.set()
            else:
                self.dropped += rows
        summary = {"last_step": max(self._max_step, 0), "records": self.records_written,
                   "dropped": self.dropped}
        if self._failed is not None:
            summary["failed"] = self._failed
        try:
            self._writer.close(summary)
        except OSError as exc:
            self._fail(exc)


class _Fp16:
    """Deferred conversion of an attention map to a float16 numpy array (done on the writer thread)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def resolve(self) -> np.ndarray:
        return np.asarray(resolve(self.value), dtype=np.float16)


@atexit.register
def _close_open_recorders() -> None:
    for rec in list(_OPEN):
        try:
            rec.close(timeout=10.0)
        except Exception:  # never fail interpreter shutdown
            pass
