"""What the Inspector's own sampled iterations cost the server it watches, read from the run.

An inference watch records attention maps and the expert load on some iterations (every 16th, the
two offset by 8). That work runs on the serving thread: the capture inside the forward, the
summaries at the iteration's end, so the iteration recorded and the one after it last longer, and
the latencies the run reports (inter-token latency above all) include it. This view measures it
from the iteration rows themselves: for each decode iteration `n` with a record, the wall time of
`n` and `n + 1` against the decode iterations just around them (`n - 1`, `n + 2`, none recorded),
so batch size and cache length, which drift slowly, cancel. A user reads how much of a reported
latency is the Inspector, not the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from inspector.views.live import LiveRun

SAMPLED_KINDS = {"attention maps": "attention_map", "expert load": "expert_load_inference"}
"""What an inference watch records on some iterations only, and the kind it is stored as."""


@dataclass(frozen=True)
class SampledCost:
    """One sampled record's cost: at `iterations` decode iterations (about one in `every`) it added
    `extra_ms` (median) of wall time; `share` is that over `every` iterations of median length.
    Records made on the same iterations are one entry ("attention maps + expert load")."""

    what: str
    iterations: int
    every: float
    extra_ms: float
    share: float


def sampled_cost(run: LiveRun, iters: pd.DataFrame, *, rank: int = 0) -> list[SampledCost]:
    """The cost of each sampled record of `rank`'s iterations `iters` (`views.inference.iterations_frame`;
    see the module docstring); [] when no decode iteration with a record has plain decode
    iterations around it."""
    if iters.empty or "ms" not in iters:
        return []
    decode = iters[(iters["prompt_tokens"].fillna(0) == 0) & (iters["generation_tokens"].fillna(0) > 0)]
    ms = dict(zip(decode["step"].astype(int), decode["ms"].astype(float)))
    if not ms:
        return []
    recorded = {what: _steps(run, kind, rank) for what, kind in SAMPLED_KINDS.items()}
    busy = set().union(*recorded.values())
    groups: dict[str, list[int]] = {}      # records made on the same iterations are one cost ("a + b")
    for n in sorted(busy):
        groups.setdefault(" + ".join(w for w, steps in recorded.items() if n in steps), []).append(n)
    median = float(np.median(list(ms.values())))
    out = []
    for what, steps in groups.items():
        extra = [ms[n] + ms[n + 1] - ms[n - 1] - ms[n + 2] for n in steps
                 if all(s in ms for s in (n - 1, n, n + 1, n + 2)) and not {n - 1, n + 1, n + 2} & busy]
        if not extra:
            continue
        every = float(np.median(np.diff(steps))) if len(steps) > 1 else float(len(ms))
        cost = float(np.median(extra))
        out.append(SampledCost(what, len(extra), every, cost, cost / (every * median) if median > 0 else float("nan")))
    return out


def cost_text(costs: list[SampledCost]) -> str:
    """"attention maps +1.00 ms (1 in 16), expert load +0.90 ms (1 in 16) ≈ 1.2 % of decode time"."""
    parts = ", ".join(f"{c.what} +{c.extra_ms:.2f} ms (1 in {c.every:.0f})" for c in costs)
    return f"{parts} ≈ {sum(c.share for c in costs) * 100:.1f} % of decode time"


def _steps(run: LiveRun, kind: str, rank: int) -> set[int]:
    table = run.table(kind)
    if not table.num_rows:
        return set()
    mine = table.filter(pc.equal(table.column("rank"), rank))
    return {int(s) for s in pc.unique(mine.column("step")).to_pylist()}

