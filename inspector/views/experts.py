"""MoE expert load: tokens per expert per layer, imbalance over time, balance bias.

Training and inference load are recorded apart (kinds `expert_load` and `expert_load_inference`,
see `inspector.probes.experts`) and kept apart here: every view takes `phase` ("train" or
"inference"); None means training, or inference when the run recorded no training load at all (an
inference-only run). Runs written before inference was recorded hold training rows only and read
as before.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from inspector.views.append_fold import AppendOnlyFold
from inspector.views.downsample import bin_columns
from inspector.views.live import LiveRun
from inspector.views.steps import nearest_at_or_before

TRAIN, INFERENCE = "train", "inference"
PHASE_KINDS = {TRAIN: "expert_load", INFERENCE: "expert_load_inference"}
"""The record kind holding each phase's expert load."""
EXPERT_KINDS = tuple(PHASE_KINDS.values())
_KINDS = EXPERT_KINDS


def expert_phases(run: LiveRun) -> list[str]:
    """The phases ("train", "inference") with recorded expert load, training first."""
    return [p for p, kind in PHASE_KINDS.items() if run.table(kind).num_rows]


def resolve_phase(run: LiveRun, phase: str | None = None) -> str:
    """`phase` checked; None: "train", or "inference" when the run recorded only inference load."""
    if phase is not None:
        if phase not in PHASE_KINDS:
            raise ValueError(f"unknown phase {phase!r}; known: {', '.join(PHASE_KINDS)}")
        return phase
    return INFERENCE if expert_phases(run) == [INFERENCE] else TRAIN


def expert_load_frame(run: LiveRun, *, phase: str | None = None) -> pd.DataFrame:
    """Every rank's expert-load rows of one phase (see `resolve_phase`), one row per (rank, step,
    router): an inference-mode run's prefill and decode rows of a step are summed into one (the
    `inspector.views.inference` views keep them apart). Treat it as read-only."""
    kind = PHASE_KINDS[resolve_phase(run, phase)]
    df = run.frame(kind)
    if "stage" not in df or not df["stage"].notna().any():
        return df
    return run.cached(("expert_stages_merged", kind), (kind,), lambda: merge_stages(df))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=np.asarray(den) > 0)


def merge_stages(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of one (rank, step, name) summed over their stages: counts and dropped added, imbalance
    (max/mean) and cv (std/mean) recomputed from the sum, the other columns of the first row kept."""
    keys = ["rank", "step", "name"]
    dup = df.duplicated(keys, keep=False)
    if not dup.any():
        return df
    merged = []
    for _, group in df[dup].groupby(keys, sort=False):
        row = group.iloc[0].copy()
        counts = [np.asarray(c, dtype=np.int64) for c in group["counts"] if c is not None]
        if counts:
            width = max(len(c) for c in counts)
            total = np.zeros(width, dtype=np.int64)
            for c in counts:
                total[:len(c)] += c
            mean = float(total.mean()) if width else 0.0
            row["counts"] = total
            row["imbalance"] = float(total.max()) / mean if mean > 0 else np.nan
            row["cv"] = float(total.std()) / mean if mean > 0 else np.nan
        if "dropped" in group:
            row["dropped"] = group["dropped"].sum(min_count=1)
        row["stage"] = None
        merged.append(row)
    out = pd.concat([df[~dup], pd.DataFrame(merged)], ignore_index=True)
    return out.sort_values(["rank", "step", "layer"]).reset_index(drop=True)


def _staged(run: LiveRun, kind: str) -> bool:
    """True when `kind` holds prefill/decode rows to merge (an inference-mode run: small, read through pandas)."""
    table = run.table(kind)
    return "stage" in table.column_names and table.column("stage").null_count < table.num_rows


ALL_RANKS = None
"""`rank=ALL_RANKS`: every rank's load summed per step and layer. Each rank records what its own
router sent where (data or expert parallelism alike), so the sum is the job's exact total."""


def resolve_rank(run: LiveRun, rank: int | None, phase: str | None = None) -> int | None:
    """`rank`; for `ALL_RANKS` on a run whose load comes from one rank, that rank (nothing to sum, and the
    per-rank caches serve both)."""
    if rank is not ALL_RANKS:
        return rank
    kind = PHASE_KINDS[resolve_phase(run, phase)]

    def compute() -> int | None:
        table = run.table(kind)
        if not table.num_rows:
            return ALL_RANKS
        lo_hi = pc.min_max(table.column("rank")).as_py()
        return lo_hi["min"] if lo_hi["min"] == lo_hi["max"] else ALL_RANKS

    return run.cached(("expert_single_rank", kind), (kind,), compute)


def load_table(run: LiveRun, rank: int | None, phase: str | None = None) -> pa.Table:
    """`rank`'s rows (None: every rank's) of a phase as Arrow, stages merged: a production-size run
    (256 experts × 58 layers × thousands of steps) never becomes Python lists of counts."""
    kind = PHASE_KINDS[resolve_phase(run, phase)]
    if _staged(run, kind):
        df = expert_load_frame(run, phase=phase)
        return pa.Table.from_pandas(df if rank is None else df[df["rank"] == rank], preserve_index=False)
    def compute() -> pa.Table:
        table = run.table(kind)
        if rank is None or (table.num_rows and pc.min_max(table.column("rank")).as_py() == {"min": rank, "max": rank}):
            return table                      # one rank: no copy of a table that may hold gigabytes
        return _filter(table, pc.field("rank") == rank)

    return run.cached(("expert_rank_table", kind, rank), (kind,), compute)


def grows_in_place(run: LiveRun, rank: int | None, phase: str | None = None) -> bool:
    """True when `rank`'s load (one rank, not summed; a training-kind table) only ever gains rows in
    step order, so what is derived from it can be extended instead of rebuilt (`_GrowingLoads`)."""
    return rank is not ALL_RANKS and not _staged(run, PHASE_KINDS[resolve_phase(run, phase)])


def _filter(table: pa.Table, expr: pc.Expression) -> pa.Table:
    return table.filter(expr) if table.num_rows else table


def counts_matrix(column: pa.ChunkedArray | pa.Array, dtype: type = np.int64) -> np.ndarray:
    """A list column of counts as a dense [rows, width] array (short or null rows padded with 0),
    without a Python object per number."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), dtype=dtype)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    width = int(lengths.max()) if n else 0
    values = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    if width and (lengths == width).all():
        return values.reshape(n, width)
    out = np.zeros((n, width), dtype=dtype)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = values
    return out


class LayerLoads(dict):
    """{layer: (steps [S] int64 ascending, counts [S, experts] int32)} of one rank and phase."""


def layer_loads(run: LiveRun, rank: int | None = 0, phase: str | None = None) -> LayerLoads:
    """Every layer's load over the run as dense arrays, built once per new data, record batch by
    record batch (a run of 10,000 recorded steps × 58 layers × 256 experts is one 600 MB int32
    array, sorted by layer and step, each layer a view of it; never a Python number per count).
    `rank` None: the ranks' rows of one (layer, step) summed.

    One rank's load grows in place while a live run goes on (`_GrowingLoads`): rows that arrived
    since the last build are appended to each layer's buffers, so a refresh costs the new rows, not
    the run (a rebuild of the whole matrix took 0.5 s at 3,000 recorded steps, every refresh)."""
    rank = resolve_rank(run, rank, phase)
    resolved = resolve_phase(run, phase)

    def compute() -> LayerLoads:
        table = load_table(run, rank, resolved)
        if not grows_in_place(run, rank, resolved):
            return dense_loads(table, summed=rank is ALL_RANKS)
        growing = run.cached(("layer_loads_growing", rank, resolved), (), _GrowingLoads)
        return growing.fold(table)

    return run.cached(("layer_loads", rank, resolved), _KINDS, compute)


def loads_where(run: LiveRun, rank: int | None, phase: str | None, where: pc.Expression | None) -> LayerLoads:
    """`layer_loads` of the rows matching `where` only (a step, a window of steps, one layer; None:
    every row, not kept): what a panel needs of a 10,000-step × 58-layer × 256-expert run without
    keeping the whole 600 MB matrix (`rank` None: summed over the ranks)."""
    rank = resolve_rank(run, rank, phase)
    table = load_table(run, rank, resolve_phase(run, phase))
    return dense_loads(table if where is None else _filter(table, where), summed=rank is ALL_RANKS)


def dense_loads(table: pa.Table, *, summed: bool) -> LayerLoads:
    """`layer_loads` of the rows of `table` (see there); `summed`: rows of one (layer, step) added up."""
    out = LayerLoads()
    if not table.num_rows:
        return out
    layer_A = table.column("layer").to_numpy()
    step_A = table.column("step").to_numpy().astype(np.int64)
    order = np.lexsort((step_A, layer_A))
    dest = np.empty_like(order)
    dest[order] = np.arange(len(order))             # each row's place once sorted by layer and step
    column = table.column("counts")
    width = int(pc.max(pc.list_value_length(column)).as_py() or 0)
    counts_A = np.zeros((len(order), width), dtype=np.int32)
    pos = 0
    for chunk in column.chunks:                     # filled in sorted order: one array, no second copy
        mat = counts_matrix(chunk)
        counts_A[dest[pos:pos + len(chunk)], :mat.shape[1]] = mat
        pos += len(chunk)
    layer_A, step_A = layer_A[order], step_A[order]
    if summed and len(step_A):
        first = np.r_[True, (np.diff(layer_A) != 0) | (np.diff(step_A) != 0)]
        starts = np.flatnonzero(first)
        counts_A = np.add.reduceat(counts_A, starts, axis=0, dtype=np.int64)
        layer_A, step_A = layer_A[starts], step_A[starts]
    bounds = np.flatnonzero(np.diff(layer_A)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(layer_A)]):
        out[int(layer_A[lo])] = (step_A[lo:hi], counts_A[lo:hi])
    return out


class _GrowingLoads(AppendOnlyFold):
    """One rank's `layer_loads`, kept between builds: per layer, steps and counts buffers with room
    to grow (doubled when full), filled from the rows of the (append-only) table not seen yet.
    Rows that do not extend every layer in step order (a step recorded again, a wider expert count)
    make it start over from the whole table. Returned arrays are views that later rows never change."""

    def _reset(self) -> None:
        self.width = 0
        self.steps: dict[int, np.ndarray] = {}
        self.counts: dict[int, np.ndarray] = {}
        self.used: dict[int, int] = {}

    def _result(self) -> LayerLoads:
        return LayerLoads({layer: (self.steps[layer][:n], self.counts[layer][:n]) for layer, n in self.used.items()})

    def _append(self, new: pa.Table) -> bool:
        """Append `new` rows to the layers' buffers; False (nothing changed) when they do not extend them."""
        if not new.num_rows:
            return True
        loads = dense_loads(new, summed=False)
        width = max(c.shape[1] for _, c in loads.values())
        if self.used and width != self.width:
            return False
        for layer, (steps_S, _) in loads.items():
            n = self.used.get(layer, 0)
            if n and steps_S[0] <= self.steps[layer][n - 1]:
                return False
        self.width = width
        for layer, (steps_S, counts_SE) in loads.items():
            n, k = self.used.get(layer, 0), len(steps_S)
            if n + k > len(self.steps.get(layer, ())):
                cap = max(2 * (n + k), 64)
                steps = np.empty(cap, dtype=np.int64)
                counts = np.zeros((cap, width), dtype=counts_SE.dtype)
                if n:
                    steps[:n], counts[:n] = self.steps[layer][:n], self.counts[layer][:n]
                self.steps[layer], self.counts[layer] = steps, counts
            self.steps[layer][n:n + k] = steps_S
            self.counts[layer][n:n + k] = counts_SE
            self.used[layer] = n + k
        return True


def expert_steps(run: LiveRun, rank: int | None = 0, *, phase: str | None = None) -> list[int]:
    """Sorted steps at which `rank` recorded expert load of `phase`."""
    rank = resolve_rank(run, rank, phase)
    resolved = resolve_phase(run, phase)

    def compute() -> list[int]:
        table = load_table(run, rank, resolved)
        return sorted(pc.unique(table.column("step")).to_pylist()) if table.num_rows else []

    return run.cached(("expert_steps", rank, resolved), _KINDS, compute)


def _at(run: LiveRun, step: int, rank: int, phase: str | None) -> pd.DataFrame:
    at = nearest_at_or_before(expert_steps(run, rank, phase=phase), step)
    if at is None:
        return pd.DataFrame()
    rows = _filter(load_table(run, rank, phase), pc.field("step") == at).to_pandas()
    return rows.sort_values("layer")


def expert_counts(run: LiveRun, *, step: int, rank: int | None = 0,
                  phase: str | None = None) -> tuple[list[int], np.ndarray]:
    """(layers, tokens per expert [layers, experts]) at the nearest recorded step ≤ `step` (`rank`
    None: summed over the ranks)."""
    rank = resolve_rank(run, rank, phase)
    if rank is ALL_RANKS:
        at = nearest_at_or_before(expert_steps(run, None, phase=phase), step)
        if at is None:
            return [], np.zeros((0, 0), dtype=np.int64)
        loads = sorted(loads_where(run, None, phase, pc.field("step") == at).items())
        layers = [layer for layer, _ in loads]
        rows = [counts_SE[-1].astype(np.int64) for _, (_, counts_SE) in loads]
        return layers, (np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int64))
    rows = _at(run, step, rank, phase)
    if rows.empty:
        return [], np.zeros((0, 0), dtype=np.int64)
    counts = [np.asarray(c if c is not None else [], dtype=np.int64) for c in rows["counts"]]
    width = max(len(c) for c in counts)
    mat = np.zeros((len(counts), width), dtype=np.int64)
    for i, c in enumerate(counts):
        mat[i, :len(c)] = c
    return rows["layer"].astype(int).tolist(), mat


def imbalance_series(run: LiveRun, *, rank: int | None = 0, phase: str | None = None) -> pd.DataFrame:
    """Per recorded step and layer: imbalance (max/mean), cv, router entropy, aux loss (`rank` None:
    imbalance and cv of the ranks' summed counts, router entropy and aux loss averaged over the ranks)."""
    rank = resolve_rank(run, rank, phase)
    cols = ["step", "layer", "imbalance", "cv", "router_entropy", "aux_loss"]
    resolved = resolve_phase(run, phase)

    def compute() -> pd.DataFrame:
        table = load_table(run, rank, resolved)
        if not table.num_rows:
            return pd.DataFrame(columns=cols)
        df = table.select(cols).to_pandas()
        if rank is ALL_RANKS:
            df = df.groupby(["layer", "step"], as_index=False)[["router_entropy", "aux_loss"]].mean()
            frames = []
            for layer, (steps_S, counts_SE) in layer_loads(run, None, resolved).items():
                c = counts_SE.astype(np.float64)
                mean = c.mean(1)
                frames.append(pd.DataFrame({"layer": layer, "step": steps_S, "imbalance": _ratio(c.max(1), mean),
                                            "cv": _ratio(c.std(1), mean)}))
            df = pd.concat(frames).merge(df, on=["layer", "step"], how="left")[cols]
        return df.sort_values(["layer", "step"]).reset_index(drop=True)

    return run.cached(("expert_imbalance", rank, resolved), _KINDS, compute)


def expert_bias(run: LiveRun, *, step: int, rank: int | None = 0,
                phase: str | None = None) -> tuple[list[int], np.ndarray | None]:
    """(layers, balance bias [layers, experts]) at the nearest step ≤ `step`; None if the router has none
    (`rank` None: the lowest rank's, the bias being the same on every rank)."""
    rank = resolve_rank(run, rank, phase)
    if rank is ALL_RANKS:
        ranks = sorted(pc.unique(load_table(run, None, phase).column("rank")).to_pylist())
        rank = ranks[0] if ranks else 0
    rows = _at(run, step, rank, phase)
    if rows.empty or rows["bias"].isna().all():
        return (rows["layer"].astype(int).tolist() if not rows.empty else []), None
    biases = [np.asarray(b if b is not None else [], dtype=np.float64) for b in rows["bias"]]
    width = max(len(b) for b in biases)
    mat = np.full((len(biases), width), np.nan)
    for i, b in enumerate(biases):
        mat[i, :len(b)] = b
    return rows["layer"].astype(int).tolist(), mat


def expert_share_over_time(run: LiveRun, *, layer: int, rank: int | None = 0, max_steps: int = 500,
                           phase: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, share of tokens [experts, steps]) of one MoE layer; at most `max_steps` columns (bins averaged).

    Added by the dashboard (experts page: "change over time").
    """
    rank = resolve_rank(run, rank, phase)
    resolved = resolve_phase(run, phase)

    def compute() -> tuple[np.ndarray, np.ndarray]:
        found = loads_where(run, rank, resolved, pc.field("layer") == int(layer)).get(int(layer))
        if found is None:
            return np.empty(0, np.int64), np.zeros((0, 0))
        steps, counts_SE = found
        keep = np.r_[steps[1:] != steps[:-1], True]                    # the last row of a repeated step
        steps, mat = steps[keep], counts_SE[keep].T.astype(np.float64)
        totals = mat.sum(0)
        share = np.divide(mat, totals, out=np.zeros_like(mat), where=totals > 0)
        return bin_columns(steps.astype(np.int64), share, max_steps, "mean")

    return run.cached(("expert_share_over_time", layer, rank, max_steps, resolved), _KINDS, compute)
