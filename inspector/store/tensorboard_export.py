"""Export a run as TensorBoard event files: scalars and histograms a stock TensorBoard reads.

One TensorBoard run per rank (`OUT/rank-00000/…`). Besides the `scalar` kind, per-step numbers of
the other kinds become scalar tags (`timing/forward/model`, `grad/<param>/norm`,
`experts/<router>/imbalance`, `system/<device>/gpu_util`, …); `histogram` rows become TensorBoard
histograms, with the under/overflow counts as buckets below `lo` and above `hi`. Attention maps
are not exported (TensorBoard would store them as lossy images). Uses the `tensorboard` package's
own event writer and protos (no TensorFlow, no torch).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np

from inspector.store.reader import RunReader, Steps

_DBL_MAX = 1.7976931348623157e308

# kind -> (columns that name a row, value columns exported as scalars)
DERIVED_SCALARS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "timing": (("phase", "name"), ("ms",)),
    "grad_stats": (("name",), ("norm", "var", "max_abs", "zero_frac", "update_ratio", "var_over_steps")),
    "activation_stats": (("name",), ("mean", "std", "dead_frac", "saturated_frac")),
    "attention_stats": (("layer", "head"), ("entropy", "max_weight")),
    "expert_load": (("name",), ("imbalance", "cv", "router_entropy", "aux_loss")),
    "system": (("device",), ("gpu_util", "mem_used", "power_w", "temp_c", "cpu_percent", "rss")),
}
_PREFIX = {"timing": "timing", "grad_stats": "grad", "activation_stats": "activations",
           "attention_stats": "attention", "expert_load": "experts", "system": "system"}


def _writer_modules():
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise ValueError("TensorBoard export needs the 'tensorboard' package: pip install tensorboard") from None
    return event_pb2, summary_pb2, EventFileWriter


def _scalar_rows(reader: RunReader, rank: int, steps: Steps) -> Iterator[tuple[str, int, float, float]]:
    df = reader.to_pandas("scalar", steps=steps, ranks=[rank])
    for name, step, wall, value in zip(df["name"].astype(str), df["step"], df["wall_time"], df["value"]):
        yield name, int(step), float(wall), float(value)
    for kind, (keys, values) in DERIVED_SCALARS.items():
        df = reader.to_pandas(kind, steps=steps, ranks=[rank])
        if df.empty:
            continue
        key_cols = [df[k].astype(str) for k in keys]
        tag_base = [_PREFIX[kind] + "/" + "/".join(parts) for parts in zip(*key_cols)]
        for col in values:
            if col not in df:
                continue
            for base, step, wall, value in zip(tag_base, df["step"], df["wall_time"], df[col]):
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    yield f"{base}/{col}", int(step), float(wall), float(value)


def _histogram_proto(summary_pb2, counts: np.ndarray, lo: float, hi: float, under: int, over: int):
    """TensorBoard's HistogramProto of equal bins over [lo, hi); out-of-range counts get a bucket
    each (below `lo`, and up to DBL_MAX, TensorBoard's convention for the last bucket)."""
    edges = np.linspace(lo, hi, len(counts) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    limits, buckets = edges[1:].tolist(), counts.astype(float).tolist()
    if under:
        limits, buckets = [float(lo)] + limits, [float(under)] + buckets
    if over:
        limits, buckets = limits + [_DBL_MAX], buckets + [float(over)]
    num = float(counts.sum() + under + over)
    total = float((counts * centres).sum() + under * lo + over * hi)
    squares = float((counts * centres ** 2).sum() + under * lo * lo + over * hi * hi)
    return summary_pb2.HistogramProto(min=float(lo), max=float(hi), num=num, sum=total, sum_squares=squares,
                                      bucket_limit=limits, bucket=buckets)


def export_tensorboard(reader: RunReader, out_dir: str | Path, *, steps: Steps = None) -> list[Path]:
    """Write one TensorBoard event file per rank under `out_dir`; returns the files written."""
    event_pb2, summary_pb2, EventFileWriter = _writer_modules()
    out = Path(out_dir)
    written: list[Path] = []
    for rank in reader.ranks:
        logdir = out / f"rank-{rank:05d}"
        logdir.mkdir(parents=True, exist_ok=True)
        writer = EventFileWriter(str(logdir))
        n = 0
        for tag, step, wall, value in _scalar_rows(reader, rank, steps):
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
            writer.add_event(event_pb2.Event(wall_time=wall, step=step, summary=summary))
            n += 1
        hist = reader.to_pandas("histogram", steps=steps, ranks=[rank])
        for row in hist.itertuples(index=False):
            proto = _histogram_proto(summary_pb2, np.asarray(row.counts, dtype=np.int64), float(row.lo),
                                     float(row.hi), int(row.underflow), int(row.overflow))
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=str(row.name), histo=proto)])
            writer.add_event(event_pb2.Event(wall_time=float(row.wall_time), step=int(row.step), summary=summary))
            n += 1
        writer.flush()
        writer.close()
        if n:
            written.extend(sorted(logdir.glob("events.out.tfevents.*")))
    return written
