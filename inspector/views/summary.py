"""The post-mortem report of a run: what went wrong, where, and when.

`run_summary` gathers, from the views alone: the hang verdict (which ranks are stuck, where, and
who is missing from which collective), the run header, every anomaly grouped by kind (with
step, rank and module), the first non-finite value's origin, expert balance per MoE layer, the
slowest modules and the straggler ranks. The CLI prints it (`inspector summary RUN`); the UIs may
show it too.

Lasting faults are shown as states, not only as onsets: a collapsed head with the step its
collapse began and whether it is still collapsed at its last sampled step (from the per-sample
`collapsed` flag the attention probe records), and a starved expert only when its run of empty
recorded steps is long enough for the experts probe to call it starved (one empty step, e.g. a
short last batch, is not starvation).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from inspector.views.anomalies import anomaly_list
from inspector.views.inference import InferenceSummary, inference_summary
from inspector.views.flag_stretches import FlagChanges, GrowingFlagChanges, stretch_due
from inspector.views.experts import (EXPERT_KINDS, dense_loads, expert_phases, expert_steps, grows_in_place,
                                     imbalance_series, load_table, loads_where, resolve_phase, resolve_rank)
from inspector.views.hang import HangVerdict, hang_verdict
from inspector.views.live import LiveRun
from inspector.views.steps import nearest_at_or_before
from inspector.views.ranks import rank_table
from inspector.views.timing import slowest_modules

NONFINITE_KINDS = ("nonfinite_activation", "nonfinite_loss", "nonfinite_grad")
STARVED_STEPS = 50
"""As `inspector.probes.experts.STARVED_STEPS` (views do not import probes; a test keeps them equal)."""
STARVED_MIN_SAMPLES = 5
"""As `inspector.probes.experts.STARVED_MIN_SAMPLES`."""
HOT_FACTOR = 3.0
"""As `inspector.probes.experts.HOT_FACTOR`."""


@dataclass
class AnomalyGroup:
    """All anomalies of one kind: how many, the first one, and the modules involved."""

    kind: str
    count: int
    first_step: int
    first_rank: int
    first_module: str
    first_message: str
    modules: list[str]
    steps: list[int]


@dataclass
class ExpertBalance:
    """One MoE layer's balance over the run."""

    layer: int
    name: str
    mean_imbalance: float
    max_imbalance: float
    worst_step: int
    last_imbalance: float
    starved_experts: list[int]          # experts starved at the last recorded step (see `starved_since`)
    starved_since: dict[int, int] = field(default_factory=dict)  # expert -> first step of its empty stretch
    phase: str = "train"                # "train", or "inference" (forwards without training)
    hot_since: dict[int, int] = field(default_factory=dict)      # expert -> first step of its ≥ 3× stretch, at the end


class _HeadOnset(NamedTuple):
    layer: int
    head: int
    first_step: int


class CollapsedHead(_HeadOnset):
    """One attention head that was flagged collapsed. As a tuple it is (layer, head, first step),
    as before; it also holds the start of its latest collapsed stretch (`since`), the last step it
    was flagged and its last sampled step (with a finite entropy)."""

    since: int
    last_flagged: int
    last_sampled: int

    def __new__(cls, layer: int, head: int, first_step: int, *, since: int, last_flagged: int,
                last_sampled: int) -> "CollapsedHead":
        self = super().__new__(cls, layer, head, first_step)
        self.since, self.last_flagged, self.last_sampled = since, last_flagged, last_sampled
        return self

    @property
    def still_collapsed(self) -> bool:
        """True when the head is flagged at its last sampled step."""
        return self.last_flagged == self.last_sampled

    def __getnewargs_ex__(self) -> tuple[tuple[int, int, int], dict[str, int]]:
        return tuple(self), {"since": self.since, "last_flagged": self.last_flagged, "last_sampled": self.last_sampled}

    def __repr__(self) -> str:
        return (f"CollapsedHead(layer={self.layer}, head={self.head}, first_step={self.first_step}, "
                f"since={self.since}, last_flagged={self.last_flagged}, last_sampled={self.last_sampled})")


@dataclass(frozen=True)
class CpuWait:
    """How long the ranks' training threads waited for a CPU another process held (the rank table's
    window medians): the median over ranks, its share of the median step, and the rank that waited most."""

    median_ms: float
    share: float
    worst_rank: int
    worst_ms: float
    ranks: int


CPU_WAIT_SAID = 0.02
"""`inspector summary` speaks of CPU waits from this share of a step on (below it is noise)."""


@dataclass
class RunSummary:
    """Everything `inspector summary` prints."""

    name: str
    status: str
    steps: int
    ranks: int
    loss_first: float | None
    loss_last: float | None
    loss_min: float | None
    anomalies: list[AnomalyGroup] = field(default_factory=list)
    first_nonfinite: AnomalyGroup | None = None
    experts: list[ExpertBalance] = field(default_factory=list)
    slowest: pd.DataFrame = field(default_factory=pd.DataFrame)
    stragglers: list[tuple[int, str, float, float]] = field(default_factory=list)  # rank, measure, ms, median ms
    collapsed_heads: list[CollapsedHead] = field(default_factory=list)
    hang: HangVerdict | None = None        # the hang verdict (see `views.hang`), None when nothing is stuck
    cpu_wait: CpuWait | None = None        # None when the timing probe recorded no CPU waits (GPU, not Linux)
    inference: InferenceSummary | None = None  # a run recorded in inference mode (see `views.inference`)


def _groups(df: pd.DataFrame) -> list[AnomalyGroup]:
    out = []
    for kind, rows in df.sort_values(["step", "rank"], kind="stable").groupby("kind", sort=False):
        first = rows.iloc[0]
        modules = [m for m in dict.fromkeys(rows["module"].fillna("").astype(str)) if m]
        out.append(AnomalyGroup(kind=str(kind), count=len(rows), first_step=int(first["step"]),
                                first_rank=int(first["rank"]), first_module=str(first["module"] or ""),
                                first_message=str(first["message"]), modules=modules,
                                steps=sorted(set(rows["step"].astype(int).tolist()))))
    return sorted(out, key=lambda g: (g.first_step, g.kind))


def starved_mask(steps: np.ndarray, counts_SE: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starved [S, E] bool, since [S, E] int64) per recorded step (`steps`, sorted) and expert: the
    experts probe's rule, from the recorded counts alone: an expert is starved at a recorded step
    when it got no token on every recorded step of a stretch that spans at least `STARVED_STEPS`
    training steps and `STARVED_MIN_SAMPLES` recorded ones; `since` is the stretch's first step
    (-1 where the expert got tokens). It stays starved until it gets a token again."""
    steps = np.asarray(steps, dtype=np.int64)
    zero_SE = np.asarray(counts_SE) == 0
    if len(steps) == 0:
        return zero_SE, np.full(zero_SE.shape, -1, dtype=np.int64)
    idx_S1 = np.arange(len(steps))[:, None]
    last_nonzero_SE = np.maximum.accumulate(np.where(zero_SE, -1, idx_S1), axis=0)
    start_SE = last_nonzero_SE + 1                      # first recorded index of the current empty stretch
    since_SE = np.where(zero_SE, steps[np.minimum(start_SE, len(steps) - 1)], -1)
    seen_SE = idx_S1 - start_SE + 1
    starved = zero_SE & (seen_SE >= STARVED_MIN_SAMPLES) & (steps[:, None] - since_SE + 1 >= STARVED_STEPS)
    return starved, since_SE


def stretch_at_end(steps: np.ndarray, flags_SE: np.ndarray) -> dict[int, int]:
    """{expert: first step of its stretch} for the experts whose flag has held on every recorded step of a
    stretch, ending at the last of `steps`, long enough for the experts probe to report it (`STARVED_STEPS`
    steps, `STARVED_MIN_SAMPLES` samples): one pass, from each expert's last unflagged step."""
    steps = np.asarray(steps, dtype=np.int64)
    off_SE = ~np.asarray(flags_SE, dtype=bool)
    S = len(steps)
    if S == 0 or off_SE.size == 0:
        return {}
    last_E = np.where(off_SE.any(0), S - 1 - np.argmax(off_SE[::-1], axis=0), -1)   # last index without the flag
    return stretch_due(steps, last_E + 1, S - 1, STARVED_STEPS, STARVED_MIN_SAMPLES)


TAIL_ROWS = 64
"""Recorded steps `tail_stretch_at_end` looks at first (then four times as many, until every expert's
stretch starts inside them)."""


def tail_stretch_at_end(steps: np.ndarray, counts_SE: np.ndarray,
                        flag_rows: Callable[[np.ndarray], np.ndarray]) -> dict[int, int]:
    """`stretch_at_end(steps, flag_rows(counts_SE))`, flags computed only for the last rows that decide
    it: a stretch at the end starts after each expert's last unflagged row, and most experts are
    unflagged at the last row or a few before it. `flag_rows` must judge each row on its own.
    (58 layers × 256 experts × 10,000 recorded steps: the tail, not 150 M flags, per draw.)"""
    steps = np.asarray(steps, dtype=np.int64)
    S, k = len(steps), min(len(steps), TAIL_ROWS)
    while True:
        flags_KE = np.asarray(flag_rows(np.asarray(counts_SE[S - k:])), dtype=bool)
        if k == S or (~flags_KE).any(0).all():   # every stretch at the end starts inside the tail
            return stretch_at_end(steps[S - k:], flags_KE)
        k = min(S, 4 * k)


def _empty_rows(counts_KE: np.ndarray) -> np.ndarray:
    return counts_KE == 0


def _hot_rows(counts_KE: np.ndarray) -> np.ndarray:
    counts_KE = np.asarray(counts_KE, dtype=np.float64)
    mean_K1 = counts_KE.mean(1, keepdims=True) if counts_KE.size else np.zeros((len(counts_KE), 1))
    return (counts_KE >= HOT_FACTOR * mean_K1) & (mean_K1 > 0)


def starved_at_end(steps: np.ndarray, counts_SE: np.ndarray) -> dict[int, int]:
    """{expert: first step of its empty stretch} for the experts starved at the last of `steps`
    (`starved_mask`'s last row)."""
    return tail_stretch_at_end(steps, counts_SE, _empty_rows)


def hot_at_end(steps: np.ndarray, counts_SE: np.ndarray) -> dict[int, int]:
    """{expert: first step of its stretch} for the experts hot at the last of `steps`: at least
    `HOT_FACTOR` times their layer's balanced share on every recorded step of the stretch."""
    return tail_stretch_at_end(steps, counts_SE, _hot_rows)


def starved_experts(run: LiveRun, *, step: int | None = None, rank: int | None = 0,
                    phase: str | None = None) -> dict[int, dict[int, int]]:
    """{layer: {expert: first step of its empty stretch}} for the experts starved (the experts probe's
    rule, see `starved_mask`) at the last recorded step at or before `step` (None: the last one), in
    one phase's load (see `views.experts.resolve_phase`)."""
    return _experts_at_end(run, _empty_rows, step=step, rank=rank, phase=phase)


def hot_experts(run: LiveRun, *, step: int | None = None, rank: int | None = 0,
                phase: str | None = None) -> dict[int, dict[int, int]]:
    """{layer: {expert: first step of its stretch}} for the experts hot (≥ `HOT_FACTOR` × the balanced
    share on every recorded step of a long enough stretch, the experts probe's `expert_hot` rule) at the
    last recorded step at or before `step`."""
    return _experts_at_end(run, _hot_rows, step=step, rank=rank, phase=phase)


def _experts_at_end(run: LiveRun, flag_rows: Callable[[np.ndarray], np.ndarray], *, step: int | None,
                    rank: int | None, phase: str | None) -> dict[int, dict[int, int]]:
    """{layer: `stretch_at_end`} of the experts `flag_rows(counts [steps, experts])` flags, over the load
    up to the recorded step at or before `step`, cached per step. Only the last `TAIL_ROWS` recorded steps are read; a layer where some
    expert's stretch starts before them is answered from `FlagChanges` of the whole load (one pass,
    kept until new rows arrive: an expert hot for a whole 10,000-step run costs one pass, not one per
    step the user looks at; the 600 MB count matrix of 58 layers × 256 experts is never kept)."""
    rank = resolve_rank(run, rank, phase)
    steps = expert_steps(run, rank, phase=phase)
    at = (steps[-1] if step is None else nearest_at_or_before(steps, step)) if steps else None
    if at is None:
        return {}
    end = bisect.bisect_right(steps, at)

    def compute() -> dict[int, dict[int, int]]:
        out: dict[int, dict[int, int]] = {}
        first = steps[max(end - TAIL_ROWS, 0)]
        where = None if first == steps[0] and at == steps[-1] else \
            (pc.field("step") >= first) & (pc.field("step") <= at)
        unsettled = []
        for layer, (steps_S, counts_SE) in loads_where(run, rank, phase, where).items():
            flags_KE = np.asarray(flag_rows(counts_SE), dtype=bool)
            if first != steps[0] and not (~flags_KE).any(0).all():
                unsettled.append(int(layer))        # some expert's stretch starts before the tail
                continue
            found = stretch_at_end(steps_S, flags_KE)
            if found:
                out[int(layer)] = found
        if unsettled:
            changes = _flag_changes(run, flag_rows, rank, phase)
            for layer in unsettled:
                found = changes[layer].due_at(at, STARVED_STEPS, STARVED_MIN_SAMPLES) if layer in changes else {}
                if found:
                    out[layer] = found
        return out

    return run.cached(("experts_at_end", flag_rows.__name__, rank, resolve_phase(run, phase), at), EXPERT_KINDS,
                      compute)


def _flag_changes(run: LiveRun, flag_rows: Callable[[np.ndarray], np.ndarray], rank: int | None,
                  phase: str | None) -> dict[int, FlagChanges]:
    """{layer: FlagChanges} of `flag_rows` over the whole load (cached until new rows; one rank's
    extended by its new rows, the ranks' sum rebuilt: a step's rows of several ranks arrive apart)."""
    rank = resolve_rank(run, rank, phase)
    resolved = resolve_phase(run, phase)
    key = (flag_rows.__name__, rank, resolved)

    def compute() -> dict[int, FlagChanges]:
        if grows_in_place(run, rank, resolved):
            growing = run.cached(("expert_flag_changes_growing", *key), (),
                                 lambda: GrowingFlagChanges(flag_rows, lambda rows: dense_loads(rows, summed=False)))
            return growing.fold(load_table(run, rank, resolved))
        return {int(layer): FlagChanges.of(steps_S, flag_rows(counts_SE))
                for layer, (steps_S, counts_SE) in loads_where(run, rank, resolved, None).items()}

    return run.cached(("expert_flag_changes", *key), EXPERT_KINDS, compute)


def _collapsed_heads(run: LiveRun, rank: int = 0) -> list[CollapsedHead]:
    """Every head ever flagged collapsed on `rank` (samples with a non-finite entropy left out)."""
    df = run.frame("attention_stats")
    if df.empty:
        return []
    df = df[(df["rank"] == rank) & np.isfinite(df["entropy"].astype(float))]
    out = []
    for (layer, head), rows in df.sort_values("step").groupby(["layer", "head"]):
        flags = rows["collapsed"].fillna(False).astype(bool).to_numpy()
        if not flags.any():
            continue
        steps = rows["step"].to_numpy(np.int64)
        last = int(np.flatnonzero(flags)[-1])
        healthy_before = np.flatnonzero(~flags[:last])
        since = int(steps[healthy_before[-1] + 1]) if len(healthy_before) else int(steps[np.argmax(flags)])
        out.append(CollapsedHead(layer=int(layer), head=int(head), first_step=int(steps[np.argmax(flags)]),
                                 since=since, last_flagged=int(steps[last]), last_sampled=int(steps[-1])))
    return out


def _expert_balance(run: LiveRun) -> list[ExpertBalance]:
    """Balance per MoE layer and phase: training first, then inference (forwards without training)."""
    return [b for phase in expert_phases(run) for b in _phase_balance(run, phase)]


def _phase_balance(run: LiveRun, phase: str) -> list[ExpertBalance]:
    """Rank 0's balance per layer (names and scalars read without the counts; the starved and hot
    rules on the dense per-layer arrays), so a 58 × 256 × 10,000-step run summarises in seconds."""
    table = load_table(run, 0, phase)
    if not table.num_rows:
        return []
    names = table.select(["step", "layer", "name"]).to_pandas().sort_values("step").groupby("layer")["name"].last()
    imb = imbalance_series(run, phase=phase)
    starved_by_layer = starved_experts(run, phase=phase)
    hot_by_layer = hot_experts(run, phase=phase)
    out = []
    for layer, rows in imb.groupby("layer"):
        worst = rows.loc[rows["imbalance"].idxmax()]
        starved = starved_by_layer.get(int(layer), {})
        out.append(ExpertBalance(layer=int(layer), name=str(names.get(layer, "")),
                                 mean_imbalance=float(rows["imbalance"].mean()),
                                 max_imbalance=float(worst["imbalance"]), worst_step=int(worst["step"]),
                                 last_imbalance=float(rows["imbalance"].iloc[-1]),
                                 starved_experts=sorted(starved), starved_since=starved, phase=phase,
                                 hot_since=hot_by_layer.get(int(layer), {})))
    return out


def run_summary(run: LiveRun, *, top_modules: int = 8, now: float | None = None) -> RunSummary:
    """The post-mortem report of `run` (works on live, finished and crashed runs alike); `now` is the
    clock the hang verdict judges heartbeats by (None: the current time)."""
    scalars = run.frame("scalar")
    loss_rows = scalars[(scalars["name"] == "loss") & (scalars["rank"] == 0)].sort_values("step") \
        if not scalars.empty else pd.DataFrame({"step": [], "value": []})
    loss = loss_rows["value"]
    finite = loss[np.isfinite(loss)]
    groups = _groups(anomaly_list(run, limit=1 << 30))
    nonfinite = [g for g in groups if g.kind in NONFINITE_KINDS]
    # The earliest non-finite record names the origin; at one step an activation beats the loss it caused.
    order = {k: i for i, k in enumerate(NONFINITE_KINDS)}
    first_nonfinite = min(nonfinite, key=lambda g: (g.first_step, order[g.kind])) if nonfinite else None
    hang = hang_verdict(run, now)
    table = rank_table(run, hang=hang)   # one verdict, on the summary's clock, for the statuses and the report
    stragglers = []
    for r in table.itertuples():
        if r.straggler:
            # Name the measure that sets the rank apart (compute time under synchronous DDP).
            ratios = {col: getattr(r, col) / table[col].median() for col in ("step_ms", "compute_ms")
                      if np.isfinite(getattr(r, col)) and table[col].median() > 0}
            col = max(ratios, key=ratios.get)
            stragglers.append((int(r.rank), col, float(getattr(r, col)), float(table[col].median())))
    return RunSummary(
        name=run.meta.name, status=run.status(), steps=int(loss_rows["step"].max()) + 1 if len(loss_rows) else run.last_step() + 1, ranks=len(run.ranks()),
        loss_first=float(finite.iloc[0]) if len(finite) else None,
        loss_last=float(loss.iloc[-1]) if len(loss) else None,
        loss_min=float(finite.min()) if len(finite) else None,
        anomalies=groups, first_nonfinite=first_nonfinite, experts=_expert_balance(run),
        slowest=slowest_modules(run, top=top_modules), stragglers=stragglers, cpu_wait=cpu_wait(table),
        collapsed_heads=_collapsed_heads(run), hang=hang, inference=inference_summary(run))


def cpu_wait(table: pd.DataFrame) -> CpuWait | None:
    """`CpuWait` of a `rank_table` (None when no rank recorded a CPU wait)."""
    waits = table[["rank", "cpu_wait_ms", "step_ms"]].dropna(subset=["cpu_wait_ms"])
    if waits.empty:
        return None
    median = float(waits["cpu_wait_ms"].median())
    step = float(waits["step_ms"].median())
    worst = waits.loc[waits["cpu_wait_ms"].idxmax()]
    return CpuWait(median, median / step if step > 0 else float("nan"), int(worst["rank"]), float(worst["cpu_wait_ms"]),
                   len(waits))
