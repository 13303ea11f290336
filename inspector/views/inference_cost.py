"""What the Inspector's own sampled iterations cost the server it watches, read from the run.

An inference watch records attention maps and the expert load on some iterations (every 16th, the
two offset by 8). That work runs on the serving thread: the capture inside the forward, the
summaries at the iteration's end, so the iteration recorded and the one after it last longer, and
the latencies the run reports (inter-token latency above all) include it. This view measures it
from the iteration rows themselves: for each decode iteration `n` with a record, the wall time of
`n` and `n + 1` against the nearest clean decode iteration on each side (`n - 1` and `n + 2` when
they are: neither it nor the one before it recorded anything; within `REACH` iterations), so batch
size and cache length, which drift slowly, cancel. A record whose iterations have no clean
neighbours is said to be unmeasured, not left out. A user reads how much of a reported
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
REACH = 4
"""How far (iterations) a record's clean neighbours may be."""


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

    def clean(m: int) -> bool:
        return m in ms and m not in busy and m - 1 not in busy

    out = []
    for what, steps in groups.items():
        extra = []
        for n in steps:
            before = next((m for m in range(n - 1, n - 1 - REACH, -1) if clean(m)), None)
            after = next((m for m in range(n + 2, n + 2 + REACH) if clean(m)), None)
            if n in ms and n + 1 in ms and n + 1 not in busy and before is not None and after is not None:
                extra.append(ms[n] + ms[n + 1] - ms[before] - ms[after])
        every = float(np.median(np.diff(steps))) if len(steps) > 1 else float(len(ms))
        cost = float(np.median(extra)) if extra else float("nan")
        out.append(SampledCost(what, len(extra), every, cost, cost / (every * median) if median > 0 else float("nan")))
    return out


def cost_text(costs: list[SampledCost]) -> str:
    """"attention maps +1.00 ms (1 in 16), expert load +0.90 ms (1 in 16) ≈ 1.2 % of decode time"; a
    record without clean neighbours: "expert load (1 in 16) not measured: other records beside it"."""
    measured = [c for c in costs if c.iterations]
    parts = [f"{c.what} +{c.extra_ms:.2f} ms (1 in {c.every:.0f})" for c in measured]
    text = f"{', '.join(parts)} ≈ {sum(c.share for c in measured) * 100:.1f} % of decode time" if parts else ""
    unmeasured = [f"{c.what} (1 in {c.every:.0f})" for c in costs if not c.iterations]
    if unmeasured:
        text += ("; " if text else "") + f"{', '.join(unmeasured)} not measured: other records beside it"
    return text


def _steps(run: LiveRun, kind: str, rank: int) -> set[int]:
    table = run.table(kind)
    if not table.num_rows:
        return set()
    mine = table.filter(pc.equal(table.column("rank"), rank))
    return {int(s) for s in pc.unique(mine.column("step")).to_pylist()}

