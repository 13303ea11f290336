"""A loss spike's root cause: which signals left their own baseline first before step N, and how far.

Every per-layer series the run holds is judged against its own healthy baseline: the `BASELINE`
steps that end `LOOKBACK` steps before the spike, so nothing the spike did can move it. Within the
`LOOKBACK` steps up to and including the spike, a series has *left* its baseline at the first step
whose robust z-score (median, 1.4826 × MAD, with a floor so that a flat series does not turn noise
into infinity) passes `DEPART_Z` and whose value is at least `DEPART_FACTOR` times the baseline
median (for bounded signals such as entropy, a change of `DEPART_SHIFT` of it), in the direction
that precedes a spike: up for update ratios, gradient norms, activation ranges and expert imbalance,
down for attention entropy (a collapsing head). A smaller update is not a spike's cause, and series
that move both ways by nature would otherwise lead the list (a routed expert's update ratio halves
whenever the router sends it few tokens: measured ×0.4-0.5 at robust z -6 in the seeded runs). A
value that turns non-finite has left at once. Leads are ranked by how early they left (the cause
moves before its effects: an oversized update of one layer at step N-1 shows in that layer's
update/weight ratio a step before the loss, every gradient and activation move with it) and then by
how far (their largest |z| from leaving to the spike). A series that had already left before the
window and stayed off (its latest baseline values are departures themselves: a head collapsed ten
steps earlier while the loss stayed fine) is a pre-existing condition, listed apart (`earlier`).

Signals (whatever the run recorded): every step, per parameter group, `layer_trace`'s update/weight
ratio and gradient norm (the gradients probe); on sampled steps `grad_stats` (when no trace was
recorded), `activation_stats` (largest |value| per module), `attention_stats` (entropy per head),
`expert_load` (imbalance per router); every step the global gradient norm. Ratios, norms and
ranges are judged on a log scale. Also returned: the batch the step trained on (its fingerprint per
micro-batch) and whether the generators' states were kept for an exact replay.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from inspector.views.live import LiveRun

LOOKBACK = 10
"""Steps up to and including the spike in which a departure is sought."""
BASELINE = 40
"""Steps before those that form each series' own baseline."""
MIN_BASELINE = 5
"""Baseline values a series needs to be judged; a series sampled too sparsely to have them within
`BASELINE` steps takes its last `MIN_BASELINE` values before the search window instead."""
DEPART_Z, DEPART_FACTOR, DEPART_SHIFT = 6.0, 1.5, 0.2
"""A departure: robust |z| ≥ DEPART_Z and, on a log scale, ×/÷ DEPART_FACTOR against the baseline
median; on a linear scale (entropy, imbalance), a change of DEPART_SHIFT × the median."""
LOG_FLOOR, LINEAR_FLOOR = 0.01, 0.01
"""Smallest robust deviation: 0.01 in log10 units (2 %), 1 % of the median on a linear scale."""


@dataclass(frozen=True)
class Lead:
    """One series that left its baseline before (or at) the spike."""

    signal: str        # "update/weight ratio", "gradient norm", "activation range", ...
    subject: str       # parameter group, module, "L1·H2", router
    left_at: int       # first step beyond the baseline
    steps_before: int  # spike step − left_at
    value: float       # its value there
    baseline: float    # the baseline median
    z: float           # robust z there (in log10 units for log signals)
    peak_z: float      # largest |z| from left_at to the spike
    before_window: bool = False   # it had already left before the window and not come back
    centre: float = 0.0           # the baseline's median on the judging scale (log10 for log signals)
    spread: float = 1.0           # its robust deviation on that scale
    log: bool = False             # judged on a log10 scale

    @property
    def label(self) -> str:
        """"update/weight ratio · layers.0.ffn.w2.weight"."""
        return f"{self.signal} · {self.subject}" if self.subject else self.signal

    @property
    def factor(self) -> float:
        """value / baseline median (NaN where either is not finite or the baseline is 0)."""
        with np.errstate(all="ignore"):
            return float(self.value / self.baseline) if self.baseline else float("nan")


@dataclass
class Explanation:
    """`explain`'s answer for one step."""

    step: int
    rank: int
    spike: str                                   # the anomaly at the step ("" when none was recorded)
    window: tuple[int, int]                      # steps searched for departures
    baseline: tuple[int, int]                    # steps of the baselines
    leads: list[Lead] = field(default_factory=list)
    earlier: list[Lead] = field(default_factory=list)   # already off before the window (pre-existing)
    judged: int = 0                              # series with enough baseline to judge
    batch: list[int] = field(default_factory=list)   # fingerprints of the step's forwards
    spike_ranks: list[int] = field(default_factory=list)   # the ranks that recorded a spike at the step
    ranks: int = 1                               # ranks that recorded anything
    batch_shapes: str = ""
    rng_kept: bool = False

    @property
    def first(self) -> Lead | None:
        """The top-ranked lead."""
        return self.leads[0] if self.leads else None


SPIKE_KINDS = ("loss_spike", "nonfinite_loss")
"""The anomalies `explain` is asked about."""

DOWN_SIGNALS = {"attention entropy"}
"""Signals whose harmful direction is down; every other one departs upwards."""


def _series(run: LiveRun, rank: int, lo: int, hi: int) -> list[tuple[str, bool, pd.DataFrame]]:
    """(signal, log scale, frame of step/subject/value) for every signal the run recorded in [lo, hi]."""
    out: list[tuple[str, bool, pd.DataFrame]] = []

    def window(kind: str) -> pd.DataFrame:
        df = run.frame(kind)
        if df.empty:
            return df
        return df[(df["rank"] == rank) & (df["step"] >= lo) & (df["step"] <= hi)]

    trace = window("layer_trace")
    grads = trace if not trace.empty else window("grad_stats").rename(columns={"norm": "grad_norm"})
    for col, label in (("update_ratio", "update/weight ratio"), ("grad_norm", "gradient norm")):
        if not grads.empty and col in grads:
            frame = grads[["step", "name", col]].set_axis(["step", "subject", "value"], axis=1)
            if col == "update_ratio":       # null: no optimizer step measured (not a non-finite weight)
                frame = frame[frame["value"].notna()]
            out.append((label, True, frame))
    acts = window("activation_stats")
    if not acts.empty:
        rng = np.maximum(acts["max"].abs(), acts["min"].abs())
        out.append(("activation range", True, pd.DataFrame({"step": acts["step"], "subject": acts["name"],
                                                             "value": rng})))
    attn = window("attention_stats")
    if not attn.empty:
        subject = "L" + attn["layer"].astype(str) + "·H" + attn["head"].astype(str)
        out.append(("attention entropy", False, pd.DataFrame({"step": attn["step"], "subject": subject,
                                                              "value": attn["entropy"]})))
    experts = window("expert_load")
    if not experts.empty:
        out.append(("expert imbalance", False, experts[["step", "name", "imbalance"]]
                    .set_axis(["step", "subject", "value"], axis=1)))
    scalars = window("scalar")
    if not scalars.empty:
        g = scalars[scalars["name"] == "grad_norm/global"]
        if not g.empty:
            out.append(("global gradient norm", True, pd.DataFrame({"step": g["step"], "subject": "",
                                                                    "value": g["value"]})))
    return out


def _baseline(steps: np.ndarray, values: np.ndarray, base_lo: int, base_hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the series' finite values in [base_lo, base_hi] in step order, or its last
    `MIN_BASELINE` ones up to base_hi."""
    ok = np.isfinite(values) & (steps <= base_hi)
    order = np.argsort(steps[ok], kind="stable")
    s, v = steps[ok][order], values[ok][order]
    inside = s >= base_lo
    if inside.sum() >= MIN_BASELINE:
        return s[inside], v[inside]
    return s[-MIN_BASELINE:], v[-MIN_BASELINE:]


def _judge(signal: str, log: bool, subject: str, steps: np.ndarray, values: np.ndarray, spike: int,
           base_lo: int, base_hi: int) -> Lead | None:
    """The series' departure in (base_hi, spike], or None when it stayed within its baseline. A series
    whose latest baseline values have themselves left it (it moved before the window and stayed) is
    returned with `before_window` set and `left_at` the first of those values."""
    base_steps, base = _baseline(steps, values, base_lo, base_hi)
    if log:
        base_steps, base = base_steps[base > 0], base[base > 0]
    if len(base) < MIN_BASELINE:
        return None

    def scale_fn(v: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.log10(v) if log else v           # a norm that drops to 0 is -inf: far from any baseline

    b = scale_fn(base)
    centre = float(np.median(b))
    mad = 1.4826 * float(np.median(np.abs(b - centre)))
    spread = max(mad, LOG_FLOOR if log else LINEAR_FLOOR * abs(centre), 1e-12)
    bar = np.log10(DEPART_FACTOR) if log else DEPART_SHIFT * abs(centre)
    base_median = float(10 ** centre) if log else centre

    def judged(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(robust z, departed: past the bar in the harmful direction and far enough)."""
        with np.errstate(all="ignore"):
            z = (scale_fn(v) - centre) / spread
            far = np.abs(scale_fn(v) - centre) >= bar
        return z, ((-z if signal in DOWN_SIGNALS else z) >= DEPART_Z) & far

    z_base, off = judged(base)
    if off[-1]:
        first = len(off) - int(np.argmin(off[::-1])) if not off.all() else 0
        z0 = float(z_base[first])
        return Lead(signal, subject, int(base_steps[first]), int(spike - base_steps[first]), float(base[first]),
                    base_median, z0, z0, before_window=True, centre=centre, spread=spread, log=log)
    after = steps > base_hi
    order = np.argsort(steps[after], kind="stable")
    w_steps, w_values = steps[after][order], values[after][order]
    z, departed = judged(w_values)
    nonfinite = ~np.isfinite(w_values)
    left = nonfinite | departed
    if not left.any():
        return None
    i = int(np.argmax(left))
    zi = float("inf") if nonfinite[i] else float(z[i])
    peak = float("inf") if nonfinite[i:].any() else float(np.nanmax(np.abs(z[i:])))
    return Lead(signal, subject, int(w_steps[i]), int(spike - w_steps[i]), float(w_values[i]), base_median, zi, peak,
                centre=centre, spread=spread, log=log)


def explain(run: LiveRun, step: int, *, rank: int | None = None, lookback: int = LOOKBACK,
            baseline: int = BASELINE) -> Explanation:
    """Rank the signals that left their own baseline in the `lookback` steps up to `step` (see the
    module docstring); `rank`: the rank judged (default: the lowest that recorded a spike at `step`,
    else the lowest that recorded). Each rank's loss is its own batch's, so under data parallelism a
    bad batch spikes the loss of its rank only; the other ranks see it first in the averaged
    gradients, a step later in what they compute."""
    ranks = run.ranks()
    spiked = spike_ranks(run, step)
    rank = (spiked[0] if spiked else ranks[0] if ranks else 0) if rank is None else rank
    base_hi = step - lookback
    base_lo = base_hi - baseline + 1

    def compute() -> Explanation:
        out = Explanation(step=step, rank=rank, spike=_anomaly_at(run, step, rank), window=(base_hi + 1, step),
                          baseline=(max(base_lo, 0), base_hi), spike_ranks=spiked, ranks=max(len(ranks), 1))
        for signal, log, df in _series(run, rank, 0, step):
            for subject, g in df.groupby("subject", sort=False):
                steps_S, values_S = g["step"].to_numpy(np.int64), g["value"].to_numpy(np.float64)
                lead = _judge(signal, log, str(subject), steps_S, values_S, step, base_lo, base_hi)
                out.judged += int(len(_baseline(steps_S, values_S, base_lo, base_hi)[0]) >= MIN_BASELINE)
                if lead is not None:
                    (out.earlier if lead.before_window else out.leads).append(lead)
        out.leads.sort(key=lambda l: (l.left_at, -_finite(l.peak_z)))
        out.earlier.sort(key=lambda l: (l.left_at, -_finite(l.peak_z)))
        out.batch, out.batch_shapes = _batch(run, step, rank)
        rng = run.frame("rng_state")
        out.rng_kept = bool(not rng.empty and ((rng["step"] == step) & (rng["rank"] == rank)).any())
        return out

    kinds = ("layer_trace", "grad_stats", "activation_stats", "attention_stats", "expert_load", "scalar",
             "anomaly", "batch", "rng_state")
    return run.cached(("explain", step, rank, lookback, baseline), kinds, compute)


def _finite(x: float) -> float:
    return 1e300 if not np.isfinite(x) else abs(x)


def _anomaly_at(run: LiveRun, step: int, rank: int) -> str:
    df = run.frame("anomaly")
    if df.empty:
        return ""
    at = df[(df["step"] == step) & (df["rank"] == rank)]
    if at.empty:
        return ""
    spikes = at[at["kind"].isin(SPIKE_KINDS)]
    row = (spikes if not spikes.empty else at).iloc[0]
    return f"{row['kind']}: {row['message']}"


def _batch(run: LiveRun, step: int, rank: int) -> tuple[list[int], str]:
    df = run.frame("batch")
    if df.empty:
        return [], ""
    at = df[(df["step"] == step) & (df["rank"] == rank)].sort_values("micro")
    return [int(v) for v in at["fingerprint"]], (str(at["shapes"].iloc[0]) if not at.empty else "")


def headline(e: Explanation) -> str:
    """One line: what moved first, when, how far."""
    lead = e.first
    if lead is None:
        return f"step {e.step}: no recorded signal left its baseline in steps {e.window[0]}–{e.window[1]}"
    when = "at the spike" if lead.steps_before == 0 else f"{lead.steps_before} step{'s' * (lead.steps_before > 1)} before it"
    what = f"{lead.signal} of {lead.subject}" if lead.subject else lead.signal
    return f"first to move: {what} at step {lead.left_at} ({when}), {factor_text(lead.factor)} its baseline"


def factor_text(f: float) -> str:
    """"448×" ("-" when not finite): a value against its baseline median."""
    return f"{f:.3g}×" if np.isfinite(f) else "-"


def z_text(z: float) -> str:
    """"+19.7", or "non-finite" for a value that turned non-finite."""
    return "non-finite" if not np.isfinite(z) else f"{z:+.1f}"


def rank_note(e: Explanation) -> str:
    """Which ranks saw the spike, when the job has more than one ("; the spike on rank 1 only, of 2")."""
    if e.ranks <= 1:
        return ""
    if not e.spike_ranks:
        return f" of {e.ranks}; no rank recorded a spike here"
    which = (f"rank {e.spike_ranks[0]} only" if len(e.spike_ranks) == 1 else
             f"{len(e.spike_ranks)} ranks" if len(e.spike_ranks) > 6 else
             "ranks " + ", ".join(map(str, e.spike_ranks)))
    return f"; the spike on {which}, of {e.ranks}"


def spike_steps(run: LiveRun) -> list[int]:
    """Steps of the run's loss spikes and non-finite losses, in order (what `explain` is asked about)."""
    df = run.frame("anomaly")
    if df.empty:
        return []
    return sorted(set(df.loc[df["kind"].isin(SPIKE_KINDS), "step"].astype(int)))


def spike_ranks(run: LiveRun, step: int) -> list[int]:
    """The ranks that recorded a loss spike or a non-finite loss at `step`, in order."""
    df = run.frame("anomaly")
    if df.empty:
        return []
    at = df[(df["step"] == step) & df["kind"].isin(SPIKE_KINDS)]
    return sorted(set(at["rank"].astype(int)))


def lead_series(run: LiveRun, e: Explanation, top: int = 6, before: int = 20) -> list[tuple[Lead, np.ndarray, np.ndarray]]:
    """(lead, steps, robust z against its own baseline) of the `top` leads over the `before` steps up
    to the explained step (non-finite values as NaN): how each left its baseline, on one scale."""
    leads = e.leads[:top]
    if not leads:
        return []
    frames = {signal: df for signal, _, df in _series(run, e.rank, e.step - before, e.step)}
    out = []
    for lead in leads:
        df = frames.get(lead.signal)
        if df is None:
            continue
        g = df[df["subject"] == lead.subject].sort_values("step")
        steps_S, v_S = g["step"].to_numpy(np.int64), g["value"].to_numpy(np.float64)
        with np.errstate(all="ignore"):
            z_S = ((np.log10(v_S) if lead.log else v_S) - lead.centre) / lead.spread
        out.append((lead, steps_S, np.where(np.isfinite(z_S), z_S, np.nan)))
    return out


def spike_at_or_before(run: LiveRun, step: int) -> int | None:
    """The step itself when it is a spike step, else the last spike before it (None when there is none)."""
    earlier = [s for s in spike_steps(run) if s <= step]
    return earlier[-1] if earlier else None
