"""The post-mortem report of a run: what went wrong, where, and when.

`run_summary` gathers, from the views alone: the run header, every anomaly grouped by kind (with
step, rank and module), the first non-finite value's origin, expert balance per MoE layer, the
slowest modules and the straggler ranks. The CLI prints it (`inspector summary RUN`); the UIs may
show it too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from inspector.views.anomalies import anomaly_list
from inspector.views.attention import collapsed_heads
from inspector.views.experts import imbalance_series
from inspector.views.live import LiveRun
from inspector.views.ranks import rank_table
from inspector.views.timing import slowest_modules

NONFINITE_KINDS = ("nonfinite_activation", "nonfinite_loss", "nonfinite_grad")


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
    starved_experts: list[int]          # experts with zero tokens in the last recorded step


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
    collapsed_heads: list[tuple[int, int, int]] = field(default_factory=list)


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


def _expert_balance(run: LiveRun) -> list[ExpertBalance]:
    loads = run.frame("expert_load")
    if loads.empty:
        return []
    loads = loads[loads["rank"] == 0]
    imb = imbalance_series(run)
    out = []
    for layer, rows in imb.groupby("layer"):
        worst = rows.loc[rows["imbalance"].idxmax()]
        layer_loads = loads[loads["layer"] == layer].sort_values("step")
        last_counts = np.asarray(layer_loads["counts"].iloc[-1])
        out.append(ExpertBalance(layer=int(layer), name=str(layer_loads["name"].iloc[-1]),
                                 mean_imbalance=float(rows["imbalance"].mean()),
                                 max_imbalance=float(worst["imbalance"]), worst_step=int(worst["step"]),
                                 last_imbalance=float(rows["imbalance"].iloc[-1]),
                                 starved_experts=np.flatnonzero(last_counts == 0).tolist()))
    return out


def run_summary(run: LiveRun, *, top_modules: int = 8) -> RunSummary:
    """The post-mortem report of `run` (works on live, finished and crashed runs alike)."""
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
    table = rank_table(run)
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
        slowest=slowest_modules(run, top=top_modules), stragglers=stragglers,
        collapsed_heads=collapsed_heads(run))
