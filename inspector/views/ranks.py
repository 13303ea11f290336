"""One row per rank for cluster monitoring: progress, speed, loss, GPU state, stragglers.

Every number of a row is taken over one window of steps, the same for every rank: the last
`window` timed steps at or before `at` (the replay cursor; None: the newest). Times are medians
over the window, tokens/s is the tokens a step processes over that median step time (so the two
always agree), loss and grad norm are the last values at or before `at`, GPU state the last sample.

Straggler rule (measured with 4 gloo ranks on 2 cores, quiet and with 2-6 competing busy-loop
processes; `benchmarks/straggler_busy.py`): per step, each rank's time is compared with the other
ranks' at the *same* step, for two measures:
- compute: forward + data + optimizer (`COMPUTE_PHASES`), the time a rank spends on its own work.
  Under synchronous data parallelism every rank's total step time is the slowest rank's (the others
  wait in collectives, recorded in backward/other), so this is what shows who is slow;
- step: the total step time, which sets ranks apart when they do not wait for each other.
A rank is a straggler on a measure when, over at least `MIN_STEPS` steps of the window,
1. the median of its per-step ratio to the other ranks' median is ≥ `factor` (1.25), and
2. the median over steps of its lead over the slowest *other* rank (0 on steps where it is not the
   slowest) is ≥ `LEAD_SHARE` of the step time: it holds every step up, in most steps.
Rule 1 alone flagged healthy ranks: a rank the OS scheduler short-changes is 1.3-1.5× the others
for a dozen steps on an oversubscribed machine (and 1.36× once on a quiet one), but it is rarely
alone at the top and its lead stayed ≤ 8 % of the step; the demo's 50 ms slow rank led by 21-40 %
in every window. Per-step comparison keeps a machine-wide slowdown (which hits every rank at the
same steps) out of the ratios.

When the run has the collective tracker's rows (`timing` name "collectives", phase "comm_wait"),
a third measure comes first: own work, the step time minus the time spent waiting in collectives.
Under data parallelism the ranks that wait for a straggler spend that wait in a collective
(DDP's gradient all-reduce, an explicit `all_reduce`), so their own work stays short while the
straggler's grows, whichever section slows it (backward too, which compute leaves out).

Cause (`section_ms`, `_cause`): a flagged rank's reason starts with the section that makes it
slow, among data, forward, backward, optimizer and other (user code), each with the rank's
communication wait taken out: waiting is the *victim's* symptom, not a cause. The wait the
tracker files under data/forward/optimizer comes out of that section; the rest (DDP's wait after
the backward, collectives in user code) out of other first, then backward (the timing probe's
backward ends before DDP's final wait on the CPU runs measured, so the wait sits in other). The
section is the one with the largest median excess over the other ranks' per-step median; its
ratio to them is given for the window and, as the rank's own history, over the `window` steps
before it ("n/a" when there are none): "backward 1.31× the other ranks, +3 ms (own median of the
previous steps 1.00×)". On GPU, the rank's SM clock, power and temperature against the other
ranks' medians follow, with the NVML clocks-event ("throttle") reason that held its clocks down
most often and how often the other ranks had it: "clocks held by hw_thermal in 90 % of samples
(other ranks 0 %)" (`_gpu_note`; the sampler's `clock_events` column).

CPU waits (`_take_out_cpu_waits`): on CPU runs on Linux the timing probe also records how long the
training thread was runnable but waiting for a CPU in each section ("cpu_wait" rows). That time
comes out of the sections and of own work too: another process on a rank's cores makes the rank
slower by exactly its wait, and the scheduler spreads such a load unevenly (beside one busy loop
per core on 2 cores, a healthy rank's backward measured 1.25-2x the other's in about half the runs;
a rank slowed 1.3x stayed unflagged in some). With the waits taken out healthy ranks stayed within
1.07x and the slowed rank's backward measured 1.39-1.58x, slowest in 16-20 of 20 steps. The
forward+data+optimizer measure has the waits taken out too (it flagged a healthy rank starved of CPU
at 1.47x); the step time keeps the wall clock. So on CPU runs a rank slowed only by another process
on its cores is not called a straggler: its wait is in the "cpu_wait" rows (the rank table's
`cpu_wait_ms`, the System page's CPU-wait chart).
"""
from __future__ import annotations

import time
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from inspector.views.hang import HangVerdict, hang_verdict
from inspector.views.live import LiveRun
from inspector.views.timing import CPU_WAIT, phase_ms

MAX_MISSING_ROWS = 64
"""Missing ranks listed in the rank table (the rest are counted in the run's problems)."""
RANK_COLUMNS = ["rank", "node", "straggler_score", "step", "step_ms", "compute_ms", "cpu_wait_ms", "tokens_per_s", "loss", "grad_norm", "gpu_util", "gpu_mem_used",
                "gpu_mem_total", "power_w", "temp_c", "status", "straggler", "straggler_reason"]
"""Columns of `rank_table`, in display order (`straggler_reason` is "" for a rank not flagged)."""

NUMERIC = ["step", "step_ms", "compute_ms", "cpu_wait_ms", "tokens_per_s", "loss", "grad_norm", "gpu_util", "gpu_mem_used", "gpu_mem_total",
           "power_w", "temp_c"]

COMPUTE_PHASES = ("forward", "data", "optimizer")
"""The phases a rank spends on its own work (backward and other hold the collectives' wait)."""

MIN_STEPS = 8
"""Steps a rank must share with the others in the window before it can be called a straggler."""
LEAD_SHARE = 0.12
"""Median lead over the slowest other rank, as a share of the step time, that marks a straggler."""
MEASURES = {"own": ("own work (step minus communication wait)", ("own",)),
            "compute": ("forward+data+optimizer", COMPUTE_PHASES), "step": ("step time", ("total",))}
"""Straggler measures, in the order they are judged: key -> (label, timing phases summed); "own"
only where the run has communication-wait rows."""
SECTIONS = ("data", "forward", "backward", "optimizer", "other")
SECTION_FACTOR, SECTION_LEAD, SECTION_SLOWEST = 1.2, 0.10, 0.65
"""The bar of the section and own-work measures (communication waits taken out): ratio to the other
ranks' median, lead over the slowest other rank as a share of the ranks' own work, share of the steps
where it is the slowest. Measured on 11 two-rank gloo jobs on 2 cores (`tests/hangs/worker.py`, its
backward slowed 1.3x on one rank, or healthy; quiet, or beside one busy loop): the slowed ranks'
backward reached 1.25-1.40x, 13-20 % lead, slowest in 14-20 of 20 steps; no healthy rank's section
passed 1.23x with more than a 7 % lead, or 1.12x on backward. The old bar (1.25x, 12 %, 16 of 20 steps)
missed two of six slowed runs 20 steps after the slowdown began; 1.15x flagged a healthy busy run.
With more competing load (2-6 busy loops on 2 cores) healthy ranks were measured at 1.26-1.33x with a
12-23 % lead for a dozen steps: a 1.3x slowdown of one section is at the noise there."""
STRONG_RATIO, STRONG_LEAD = 2.0, 0.08
"""A section at least this many times the other ranks' needs only this lead: scheduler noise scales a
rank's sections together (1.2-1.3x), it does not double one the others barely spend time in (the
demo's planted 50 ms data delay on 4 ranks sharing 2 cores: ∞x on most steps, a 12 % lead). Tiny
sections do double by noise: a healthy rank's "other" (a few ms outside every phase) measured ∞x at a
5 % lead beside a busy loop."""
"""The sections a cause can name (their `section_ms` columns hold own work, waits taken out)."""
PHASE_SECTIONS = ("data", "forward", "backward", "optimizer")
"""The sections the timing probe times as phases (with CPU-wait rows of their own), and the ones
judged on their own. "other" is what no phase claims, waits the collective tracker does not see
included, and those are the victims' symptom (beside 4 busy loops on 2 cores, the victims of the
4-rank demo's slowed rank spent 40-57 ms a step there, unevenly: rank 0 1.43-2x the others with a
10-16 % lead). A rank slow in its own code between phases makes the others wait in collectives and
shows as own work, with "other" named as the cause."""
STEP_COST = 0.05
"""A section or own-work lead must also hold the step up by this share of the median step less CPU
waits (the step as the job would run without another process on its cores): own work can be a small
part of a busy machine's step, and a few ms of rank 0's own logging measured a 17 % lead over it (4
ranks beside 4 busy loops on 2 cores). The slowed rank of the 2-rank tests cost it 9-23 %, and 12 %
with a CI run beside the job.

With three or more ranks a section or own-work lead must also be at least the other ranks' own
spread (median over steps of slowest − fastest other, `Verdict.spread_ms`): a straggler stands out
from the others by more than they differ among themselves. Beside 4 busy loops on 2 cores the 4-rank
demo's healthy ranks' data section spread 10-27 ms, and one led by 4 ms at 1.69x in 13 of 19 steps;
the slowed rank's 50 ms led by far more than that spread. A section the rank is the slowest in on
`CONSISTENT` of the steps at `STRONG_RATIO` needs no spread: one noisy other rank both shortens the
lead (own − slowest other) and widens the spread, so the two count the same noise twice (a CI run of
the 4-rank demo beside 4 busy loops missed the slowed rank, 50 ms planted in its data section)."""
CONSISTENT = 0.9
"""Share of the window's steps a strong section must be the slowest in to be judged without the spread."""
WAITED_FOR = 0.5
"""Own work only: the other ranks must also wait in the tracked collectives for at least this share of
its lead (median over steps of the others' median communication wait minus its own). A rank whose
own work really holds the step up makes the others wait for it there; a healthy rank's own work can
lead by time it spent blocked outside any phase and outside every tracked wait (on a lock, the GIL,
an untracked wait): beside 4 busy loops on 2 cores, a healthy rank 0 of the 4-rank demo measured
1.39x with a 21 % lead in a CI run, its "other" 2x the other ranks', while its communication wait
was no shorter than theirs (4-rank demo runs here: ±2 ms)."""
COMM_NAME = "collectives"
"""`timing` rows of the collective tracker: name "collectives", phase "comm_wait" or "comm_wait_<phase>"."""


@dataclass(frozen=True)
class Verdict:
    """One rank on one measure over a window: the statistics of the straggler rule."""

    steps: int            # steps of the window where this rank and at least one other were timed
    ratio: float          # median over steps of (this rank / median of the other ranks)
    slowest: int          # steps where it was slower than every other rank
    lead: float           # median over steps of max(this − slowest other, 0) / step time
    lead_ms: float        # the same lead in ms
    spread_ms: float = 0.0  # median over steps of the other ranks' own spread (slowest − fastest other), ms

    def flagged(self, factor: float, slowest_share: float = 0.0, lead_share: float = LEAD_SHARE,
                strong: tuple[float, float] | None = None) -> bool:
        """The straggler rule (see the module docstring); `slowest_share`: the share of the steps where
        it must be slower than every other rank (the section measures' bar), `lead_share` its lead;
        `strong` (ratio, lead): a ratio at least that high needs only that lead."""
        lead_ok = self.lead >= lead_share or (strong is not None and self.ratio >= strong[0] and self.lead >= strong[1])
        return (self.steps >= MIN_STEPS and self.ratio >= factor and lead_ok
                and self.slowest >= slowest_share * self.steps)

    def consistent(self) -> bool:
        """At least `STRONG_RATIO` the others' median and the slowest on `CONSISTENT` of the steps."""
        return self.ratio >= STRONG_RATIO and self.slowest >= CONSISTENT * self.steps


def window_steps(run: LiveRun, *, window: int = 20, at: int | None = None) -> np.ndarray:
    """The last `window` steps at or before `at` that any rank timed (the window every column uses)."""
    steps = np.unique(phase_ms(run, ("total",))["step"].to_numpy(dtype=np.int64))
    if at is not None:
        steps = steps[steps <= at]
    return steps[-window:]


def _matrix(per_step: pd.DataFrame, steps: np.ndarray, ranks: list[int]) -> np.ndarray:
    """steps × ranks ms of a `phase_ms` frame (NaN where a rank did not time a step)."""
    sel = per_step[per_step["step"].isin(steps)]
    wide = sel.pivot_table(index="step", columns="rank", values="ms", aggfunc="last")
    return wide.reindex(index=steps, columns=ranks).to_numpy(dtype=np.float64)


def others_stats(ms_SR: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every step and rank, over the *other* ranks' finite values of that step: (median, max, min,
    count), NaN where there is none. One sort per step instead of a median per rank (1,024 ranks:
    O(S·R log R), not O(S·R²))."""
    S, R = ms_SR.shape
    fin_SR = np.isfinite(ms_SR)
    order_SR = np.argsort(np.where(fin_SR, ms_SR, np.inf), axis=1, kind="stable")
    sorted_SR = np.take_along_axis(np.where(fin_SR, ms_SR, np.inf), order_SR, axis=1)
    pos_SR = np.empty_like(order_SR)
    np.put_along_axis(pos_SR, order_SR, np.broadcast_to(np.arange(R), (S, R)), axis=1)
    count_SR = fin_SR.sum(axis=1, keepdims=True) - fin_SR            # the others' finite values
    gone_SR = np.where(fin_SR, pos_SR, R)                            # where this rank's own value sits

    def pick(j_SR: np.ndarray) -> np.ndarray:       # the j-th smallest of the others
        idx = np.where(j_SR < gone_SR, j_SR, j_SR + 1)
        return np.take_along_axis(sorted_SR, np.clip(idx, 0, R - 1), axis=1)

    none_SR = count_SR == 0
    with np.errstate(invalid="ignore"):
        median_SR = (pick((count_SR - 1) // 2) + pick(count_SR // 2)) / 2.0
    top_SR, low_SR = pick(count_SR - 1), pick(np.zeros_like(count_SR))
    nan = np.float64("nan")
    return (np.where(none_SR, nan, median_SR), np.where(none_SR, nan, top_SR), np.where(none_SR, nan, low_SR),
            count_SR)


def judge(ms_SR: np.ndarray, step_S: np.ndarray) -> list[Verdict]:
    """The straggler statistics of every rank (column) of `ms_SR`; `step_S` is each step's time."""
    median_SR, top_SR, low_SR, count_SR = others_stats(ms_SR)
    ok_SR = np.isfinite(ms_SR) & (count_SR > 0) & (step_S > 0)[:, None]
    nan = np.float64("nan")
    with np.errstate(all="ignore"):
        ratio_SR = np.where(ok_SR, _ratios(ms_SR, median_SR), nan)
        lead_SR = np.where(ok_SR, np.maximum(ms_SR - top_SR, 0.0), nan)
        share_SR = lead_SR / step_S[:, None]
        spread_SR = np.where(ok_SR, top_SR - low_SR, nan)
    steps_R = ok_SR.sum(axis=0)
    slowest_R = (ok_SR & (ms_SR > top_SR)).sum(axis=0)
    seen = steps_R > 0
    cols = [np.full(ms_SR.shape[1], nan) for _ in range(4)]
    if seen.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for out, m_SR in zip(cols, (ratio_SR, share_SR, lead_SR, spread_SR)):
                out[seen] = np.nanmedian(m_SR[:, seen], axis=0)
    ratio_R, share_R, lead_R, spread_R = cols
    return [Verdict(int(steps_R[r]), float(ratio_R[r]), int(slowest_R[r]), float(share_R[r]), float(lead_R[r]),
                    float(spread_R[r])) if seen[r] else Verdict(0, nan, 0, 0.0, 0.0)
            for r in range(ms_SR.shape[1])]


def section_ms(run: LiveRun) -> pd.DataFrame:
    """Per rank and step (index): own ms of each of `SECTIONS` (communication and CPU waits taken out,
    see the module docstring), `comm_wait`, `cpu_wait`, `total` and `own` (total − both waits; NaN on
    steps without communication-wait rows)."""
    def compute() -> pd.DataFrame:
        cols = {p: phase_ms(run, (p,)).set_index(["rank", "step"])["ms"] for p in (*SECTIONS, "total")}
        wide = pd.DataFrame(cols).reindex(columns=[*SECTIONS, "total"])
        wide = wide[wide["total"].notna()].copy()
        wide[list(SECTIONS)] = wide[list(SECTIONS)].fillna(0.0)
        df = run.frame("timing")
        comm = df[df["name"] == COMM_NAME] if not df.empty else df
        if comm.empty:
            wide["comm_wait"] = 0.0
            wide["cpu_wait"] = _take_out_cpu_waits(wide, df) if not df.empty else 0.0
            wide["own"] = np.nan
            return wide
        waits = _by_phase(comm, wide.index)
        zero = pd.Series(0.0, index=wide.index)
        has = waits["comm_wait"].notna() if "comm_wait" in waits else zero.astype(bool)
        waits = waits.fillna(0.0)
        total_wait = waits["comm_wait"] if "comm_wait" in waits else zero
        rest = total_wait.copy()
        for p in ("data", "forward", "optimizer"):
            w = waits.get(f"comm_wait_{p}", zero).clip(upper=wide[p])
            wide[p] -= w
            rest -= w
        rest = rest.clip(lower=0.0)
        from_other = rest.clip(upper=wide["other"])
        wide["other"] -= from_other
        wide["backward"] = (wide["backward"] - (rest - from_other)).clip(lower=0.0)
        wide["comm_wait"] = total_wait
        wide["cpu_wait"] = _take_out_cpu_waits(wide, df)
        wide["own"] = (wide["total"] - total_wait - wide["cpu_wait"]).clip(lower=0.0).where(has)
        return wide

    return run.cached(("section_ms",), ("timing",), compute)


def _by_phase(rows: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    """`timing` rows as (rank, step) × phase ms on `index` (NaN where a rank did not write the row)."""
    wide = rows.pivot_table(index=["rank", "step"], columns="phase", values="ms", aggfunc="last", observed=True)
    wide.columns = [str(c) for c in wide.columns]
    return wide.reindex(index)


def _take_out_cpu_waits(wide: pd.DataFrame, timing: pd.DataFrame) -> pd.Series:
    """Subtract from each section of `wide` (in place) the time the training thread waited for a CPU
    in it (the timing probe's "cpu_wait" rows, CPU runs on Linux); return the whole step's CPU wait
    (0 where not recorded). A rank that shares its core with another process is slower by exactly
    that: measured beside a busy loop on 2 cores, a healthy rank's backward 1.25-1.40x the other's
    with a 12-19 % lead, in 7 of 14 runs; a wait, not its own work."""
    zero = pd.Series(0.0, index=wide.index)
    rows = timing[timing["name"] == CPU_WAIT]
    if rows.empty:
        return zero
    waits = _by_phase(rows, wide.index).fillna(0.0)
    parts = 0.0
    for section in PHASE_SECTIONS:
        w = waits.get(f"{CPU_WAIT}_{section}", zero).clip(upper=wide[section])
        wide[section] -= w
        parts = parts + w
    total = waits.get(CPU_WAIT, zero)
    wide["other"] = (wide["other"] - (total - parts).clip(lower=0.0)).clip(lower=0.0)
    return total


def _ratios(own_S: np.ndarray, others_S: np.ndarray) -> np.ndarray:
    """own / others per step; where the others spent no time: ∞ when this rank did, 1 when it did not
    either (a data loader that only the slow rank waits on is infinitely slower, not unknown)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_S = own_S / others_S
    zero_S = others_S <= 0
    return np.where(zero_S, np.where(own_S > 0, np.inf, 1.0), ratio_S)


def _section_matrix(run: LiveRun, column: str, steps: np.ndarray, ranks: list[int]) -> np.ndarray:
    """steps × ranks of one `section_ms` column (NaN where a rank did not time a step)."""
    wide = section_ms(run)[column].unstack("rank")
    return wide.reindex(index=steps, columns=ranks).to_numpy(dtype=np.float64)


def _ratio_to_others(m_SR: np.ndarray, r: int) -> tuple[float, float]:
    """(median over steps of own − others' median, median of own / others' median) of rank column `r`."""
    own_S, others_SO = m_SR[:, r], np.delete(m_SR, r, axis=1)
    ok_S = np.isfinite(own_S) & np.isfinite(others_SO).any(axis=1)
    if not ok_S.any():
        return float("nan"), float("nan")
    med_S = np.nanmedian(others_SO[ok_S], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_S = own_S[ok_S] / med_S
    ratio_S = ratio_S[np.isfinite(ratio_S)]      # the cause's ratio: over the steps where both took time
    return float(np.median(own_S[ok_S] - med_S)), float(np.median(ratio_S)) if len(ratio_S) else float("nan")


def _others_waited(run: LiveRun, steps: np.ndarray, ranks: list[int], r: int) -> float:
    """Median over steps of how much longer the other ranks (their median) waited in tracked
    collectives than rank column `r` (ms; NaN without such steps)."""
    wait_SR = _section_matrix(run, "comm_wait", steps, ranks)
    own_S, others_SO = wait_SR[:, r], np.delete(wait_SR, r, axis=1)
    ok_S = np.isfinite(own_S) & np.isfinite(others_SO).any(axis=1)
    if not ok_S.any():
        return float("nan")
    return float(np.median(np.nanmedian(others_SO[ok_S], axis=1) - own_S[ok_S]))


def _cause(run: LiveRun, steps: np.ndarray, before: np.ndarray, ranks: list[int], r: int) -> str:
    """"<section> R× the other ranks, +E ms (own median of the previous steps H×)" for rank column `r`."""
    best: tuple[str, float, float] | None = None
    for section in SECTIONS:
        excess, ratio = _ratio_to_others(_section_matrix(run, section, steps, ranks), r)
        if np.isfinite(excess) and (best is None or excess > best[1]):
            best = (section, excess, ratio)
    if best is None or best[1] <= 0:
        return ""
    section, excess, ratio = best
    hist = _ratio_to_others(_section_matrix(run, section, before, ranks), r)[1] if len(before) else float("nan")
    history = _times(hist)
    return (f"{section} {_times(ratio)} the other ranks, +{excess:.{0 if excess >= 10 else 1}f} ms "
            f"(own median of the previous steps {history})")


def _gpu_note(run: LiveRun, steps: np.ndarray, ranks: list[int], rank: int) -> str:
    """The rank's SM clock, power and temperature against the other ranks' medians over the window, and
    the NVML clocks-event reason that held its clocks down most often ("" without GPU samples)."""
    system = run.frame("system")
    if system.empty or len(steps) == 0:
        return ""
    gpu = system[(system["device"] != "host") & system["step"].between(steps[0], steps[-1])]
    if gpu.empty or rank not in set(gpu["rank"]):
        return ""
    med = gpu.groupby("rank")[["sm_clock_mhz", "power_w", "temp_c"]].median()
    own, others = med.loc[rank], med.drop(index=rank, errors="ignore").median()
    parts = []
    for col, unit in (("sm_clock_mhz", "MHz SM clock"), ("power_w", "W"), ("temp_c", "°C")):
        if pd.notna(own[col]):
            other = f" (others {others[col]:.0f})" if len(med) > 1 and pd.notna(others[col]) else ""
            parts.append(f"{own[col]:.0f} {unit}{other}")
    events = _clock_events_note(gpu, rank)
    if events:
        parts.append(events)
    return "GPU " + ", ".join(parts) if parts else ""


def _clock_events_note(gpu: pd.DataFrame, rank: int) -> str:
    """"clocks held by sw_power_cap in 80 % of samples (other ranks 0 %)": the reason NVML gave most
    often for this rank's GPU clocks over the window, idle aside ("" without such samples)."""
    if "clock_events" not in gpu.columns:
        return ""
    known = gpu.dropna(subset=["clock_events"])
    held = known["clock_events"].str.split("+").apply(lambda ns: [n for n in ns if n not in ("none", "gpu_idle")])
    is_mine = (known["rank"] == rank).to_numpy()
    counts = held[is_mine].explode().dropna().value_counts()
    if counts.empty:
        return ""
    top = str(counts.idxmax())
    has = held.apply(lambda ns: top in ns).to_numpy(dtype=bool)
    other = f" (other ranks {has[~is_mine].mean():.0%})" if (~is_mine).any() else ""
    return f"clocks held by {top} in {has[is_mine].mean():.0%} of samples{other}"


def _times(ratio: float) -> str:
    """"1.31×", "∞×" (the others spent no time there), "n/a"."""
    if np.isnan(ratio):
        return "n/a"
    return f"{ratio:.2f}×" if np.isfinite(ratio) else "∞×"


def _reason(label: str, v: Verdict, cause: str, gpu: str) -> str:
    text = (f"{label} {_times(v.ratio)} the other ranks' median, slowest in {v.slowest}/{v.steps} steps, "
            f"holds each step up {v.lead_ms:.0f} ms ({v.lead:.0%})")
    return "; ".join(x for x in (cause, text, gpu) if x)


def _measures(run: LiveRun, steps: np.ndarray,
              ranks: list[int]) -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, float] | None]]:
    """(label, steps × ranks ms, per-step base of the lead share, (ratio, share of steps it must be the
    slowest in) or None for the step-time rule) of every measure, in judging order:
    with communication-wait rows, each section's own work and the whole own work (base: the ranks'
    median own work), then forward+data+optimizer and the step time (base: the median step time)."""
    step_S = np.nanmedian(_matrix(phase_ms(run, ("total",)), steps, ranks), axis=1)
    out = []
    own_SR = _section_matrix(run, "own", steps, ranks)
    if np.isfinite(own_SR).any():
        with np.errstate(all="ignore"):
            own_S = np.nanmedian(own_SR, axis=1)
        out += [(f"{section} (waits taken out)", _section_matrix(run, section, steps, ranks), own_S,
                 (SECTION_FACTOR, SECTION_SLOWEST)) for section in PHASE_SECTIONS]
        out.append((MEASURES["own"][0], own_SR, own_S, (SECTION_FACTOR, SECTION_SLOWEST)))
    waits = section_ms(run)["cpu_wait"]
    for key, (label, phases) in MEASURES.items():
        if key == "compute" and (waits > 0).any():     # CPU waits out of it too (`_take_out_cpu_waits`)
            m_SR = sum(_section_matrix(run, p, steps, ranks) for p in phases)
            out.append((f"{label} (waits taken out)", m_SR, step_S, None))
        elif key != "own":
            out.append((label, _matrix(phase_ms(run, phases), steps, ranks), step_S, None))
    return out


def measure_verdicts(run: LiveRun, *, window: int = 20,
                     at: int | None = None) -> list[tuple[str, tuple[float, float] | None, list[Verdict]]]:
    """(label, bar, a Verdict per rank in `run.ranks()` order) of every straggler measure over the
    window (`_measures`), computed once for the reasons and the scores."""
    def compute() -> list[tuple[str, tuple[float, float] | None, list[Verdict]]]:
        ranks = run.ranks()
        steps = window_steps(run, window=window, at=at)
        if len(ranks) < 2 or len(steps) == 0:
            return []
        return [(label, bar, judge(ms_SR, base_S)) for label, ms_SR, base_S, bar in _measures(run, steps, ranks)]

    return run.cached(("measure_verdicts", window, at), ("timing",), compute)


def flagging_verdicts(run: LiveRun, *, window: int = 20, at: int | None = None,
                      factor: float = 1.25) -> dict[int, tuple[str, Verdict]]:
    """Per flagged rank: (label, Verdict) of the first measure, in judging order, that calls it a
    straggler over the window ending at `at` (see the module docstring); ranks not flagged are absent."""
    def compute() -> dict[int, tuple[str, Verdict]]:
        ranks = run.ranks()
        steps = window_steps(run, window=window, at=at)
        out: dict[int, tuple[str, Verdict]] = {}
        if len(ranks) < 2 or len(steps) == 0:
            return out
        sm = section_ms(run)
        in_window = sm[sm.index.get_level_values("step").isin(steps)]
        with np.errstate(all="ignore"):
            step_ms = float(np.nanmedian((in_window["total"] - in_window["cpu_wait"]).to_numpy(dtype=np.float64)))
        for label, bar, verdicts in measure_verdicts(run, window=window, at=at):
            for i, v in enumerate(verdicts):
                if ranks[i] in out:
                    continue
                if bar:
                    flagged = (v.flagged(bar[0], bar[1], SECTION_LEAD, (STRONG_RATIO, STRONG_LEAD))
                               and not v.lead_ms < STEP_COST * step_ms
                               and (v.lead_ms >= v.spread_ms or v.consistent()))
                    if flagged and label == MEASURES["own"][0]:
                        flagged = _others_waited(run, steps, ranks, i) >= WAITED_FOR * v.lead_ms
                else:
                    flagged = v.flagged(factor)
                if flagged:
                    out[ranks[i]] = (label, v)
        return out

    return run.cached(("flagging_verdicts", window, at, factor), ("timing",), compute)


def straggler_reasons(run: LiveRun, *, window: int = 20, at: int | None = None,
                      factor: float = 1.25) -> dict[int, str]:
    """Per rank: why it is a straggler over the window ending at `at`, or "" when it is not
    (the cause first, then the statistics of the measure that flagged it; see the module docstring)."""
    def compute() -> dict[int, str]:
        ranks = run.ranks()
        out = {r: "" for r in ranks}
        flagged = flagging_verdicts(run, window=window, at=at, factor=factor)
        if not flagged:
            return out
        steps = window_steps(run, window=window, at=at)
        before = window_steps(run, window=window, at=int(steps[0]) - 1)
        column = {r: i for i, r in enumerate(ranks)}
        for rank, (label, v) in flagged.items():
            i = column[rank]
            out[rank] = _reason(label, v, _cause(run, steps, before, ranks, i), _gpu_note(run, steps, ranks, rank))
        return out

    return run.cached(("straggler_reasons", window, at, factor), ("timing", "system"), compute)


def straggler_flags(step_ms: dict[int, float], factor: float = 1.25) -> dict[int, bool]:
    """One number per rank: a rank is flagged when it exceeds `factor` × the median over ranks.

    A coarse check for callers that hold only per-rank summaries; `straggler_reasons` is the rule
    the tables use (per step, robust on a busy machine).
    """
    values = [v for v in step_ms.values() if np.isfinite(v)]
    if len(values) < 2:
        return {r: False for r in step_ms}
    median = float(np.median(values))
    return {r: bool(np.isfinite(v) and v > factor * median) for r, v in step_ms.items()}


def _window_median(per_step: pd.DataFrame, steps: np.ndarray) -> dict[int, float]:
    sel = per_step[per_step["step"].isin(steps)]
    return {int(r): float(v) for r, v in sel.groupby("rank")["ms"].median().items()}


def _last_scalar(scalars: pd.DataFrame, name: str, at: int | None) -> dict[int, float]:
    sel = scalars[scalars["name"] == name]
    if at is not None:
        sel = sel[sel["step"] <= at]
    if sel.empty:
        return {}
    return sel.sort_values("step", kind="stable").groupby("rank")["value"].last().to_dict()


def _tokens_per_step(scalars: pd.DataFrame, totals: pd.DataFrame, steps: np.ndarray) -> dict[int, float]:
    """Per rank: median over `steps` of the tokens a step processed (tokens/s × the time it was measured
    over: the `step_time_s` scalar where recorded, else the step's total time)."""
    def at_steps(name: str) -> pd.Series:
        sel = scalars[(scalars["name"] == name) & scalars["step"].isin(steps)]
        return sel.groupby(["rank", "step"])["value"].last()

    tps = at_steps("tokens_per_s")
    if tps.empty:
        return {}
    seconds = at_steps("step_time_s")
    total_s = totals[totals["step"].isin(steps)].groupby(["rank", "step"])["ms"].last() / 1000.0
    seconds = seconds.reindex(tps.index).fillna(total_s.reindex(tps.index))
    tokens = (tps * seconds).dropna()
    med = tokens.groupby(level="rank").median()        # one grouped median, not one per rank
    return {int(r): float(v) for r, v in med.items()}


def _last_gpu(system: pd.DataFrame, at: int | None) -> pd.DataFrame:
    """The last sample at or before `at` of each rank's GPUs, averaged over a rank's GPUs (memory summed)."""
    if system.empty:
        return pd.DataFrame()
    gpu = system[system["device"] != "host"]
    if at is not None:
        gpu = gpu[gpu["step"] <= at]
    if gpu.empty:
        return pd.DataFrame()
    last = gpu.sort_values("wall_time").groupby(["rank", "device"]).last().reset_index()
    return last.groupby("rank").agg(gpu_util=("gpu_util", "mean"), gpu_mem_used=("mem_used", "sum"),
                                    gpu_mem_total=("mem_total", "sum"), power_w=("power_w", "sum"),
                                    temp_c=("temp_c", "max"))


JUDGE_NOW = object()
"""`rank_table`'s and `rank_statuses`' default `hang`: judge the hang verdict now."""


def rank_table(run: LiveRun, *, window: int = 20, straggler_factor: float = 1.25, at: int | None = None,
               hang: HangVerdict | None | object = JUDGE_NOW) -> pd.DataFrame:
    """One row per rank (see `RANK_COLUMNS`) over the window of `window_steps(window, at)`.

    `compute_ms` is forward + data + optimizer; `straggler` and `straggler_reason` follow the rule
    of the module docstring; `node` is the rank's host and `straggler_score` its `straggler_scores`
    lead in ms. Rows are in rank order; the rank tables show them `by_node`. `status` is as of now
    (`rank_statuses`; `hang`: the hang verdict the caller already has, None when nothing is stuck).
    """
    def compute() -> pd.DataFrame:
        ranks = run.ranks()
        scalars = run.frame("scalar")
        totals = phase_ms(run, ("total",))
        steps = window_steps(run, window=window, at=at)
        step_ms = _window_median(totals, steps)
        compute = _window_median(phase_ms(run, COMPUTE_PHASES), steps)
        cpu_wait = _window_median(phase_ms(run, (CPU_WAIT,)), steps)
        upto = totals if at is None else totals[totals["step"] <= at]
        timed = upto.groupby("rank")["step"].max().to_dict()       # progress: the last step timed
        tokens = _tokens_per_step(scalars, totals, steps)
        reasons = straggler_reasons(run, window=window, at=at, factor=straggler_factor)
        scores = straggler_scores(run, window=window, at=at)
        hosts = rank_hosts(run)
        loss = _last_scalar(scalars, "loss", at)
        gnorm = _last_scalar(scalars, "grad_norm/global", at) or _last_scalar(scalars, "grad_norm", at)
        gpu = _last_gpu(run.frame("system"), at)
        rows = []
        for r in ranks:
            g = gpu.loc[r] if r in gpu.index else {}
            ms = step_ms.get(r, np.nan)
            step = timed.get(r, run.reader.last_step(r) if at is None else np.nan)
            rows.append({"rank": r, "node": hosts.get(r, "?"), "straggler_score": scores.get(r, np.nan),
                         "step": step, "step_ms": ms, "compute_ms": compute.get(r, np.nan),
                         "cpu_wait_ms": cpu_wait.get(r, np.nan),
                         "tokens_per_s": tokens.get(r, np.nan) * 1000.0 / ms if ms > 0 else np.nan,
                         "loss": loss.get(r, np.nan), "grad_norm": gnorm.get(r, np.nan),
                         **{c: float(g[c]) if len(g) and pd.notna(g[c]) else np.nan
                            for c in ("gpu_util", "gpu_mem_used", "gpu_mem_total", "power_w", "temp_c")},
                         "status": run.reader.rank_status(r), "straggler": bool(reasons.get(r)),
                         "straggler_reason": reasons.get(r, "")})
        for r in run.reader.missing_ranks()[:MAX_MISSING_ROWS]:     # in the world, never wrote: say so
            rows.append({"rank": r, "node": "?", "step": np.nan, "status": "missing", "straggler": False,
                         "straggler_reason": ""})
        return pd.DataFrame(rows, columns=RANK_COLUMNS)

    table = run.cached(("rank_table", window, straggler_factor, at), ("scalar", "timing", "system"), compute)
    statuses = rank_statuses(run, hang)
    if not statuses:
        return table
    table = table.copy()        # the cached frame is shared: the status is as of now, not of the records
    table["status"] = [statuses.get(r, s) if s != "missing" else s for r, s in zip(table["rank"], table["status"])]
    return table


STATUS_REFRESH_S = 2.0
"""The store's rank statuses are re-read at most this often (a hung job writes no records, so
nothing else would tell the rank table that its ranks stopped)."""
STUCK_STATUS = {"stopped reporting": "silent"}
"""A live rank the hang verdict holds stuck reads "stalled" (no progress outside a collective),
"waiting" (no progress inside one: it waits for a peer) or, heartbeats stopped, "silent"."""


def rank_statuses(run: LiveRun, hang: HangVerdict | None | object = JUDGE_NOW) -> dict[int, str]:
    """Each rank's status now: the store's (live, finished, crashed, …; `rank_status`, at most
    `STATUS_REFRESH_S` old), and for a rank the store holds live but the hang verdict stuck (`hang`,
    or the verdict judged now) its `STUCK_STATUS`."""
    def store() -> dict[int, str]:
        return {r: run.reader.rank_status(r) for r in run.ranks()}

    out = dict(run.cached(("rank_statuses", int(time.monotonic() // STATUS_REFRESH_S)), (), store))
    verdict = hang_verdict(run, frames=False) if hang is JUDGE_NOW else hang
    for s in verdict.stuck if isinstance(verdict, HangVerdict) else ():
        if out.get(s.rank) == "live":
            out[s.rank] = STUCK_STATUS.get(s.state, "waiting" if s.collective is not None else "stalled")
    return out


def rank_status_counts(run: LiveRun) -> list[tuple[str, int]]:
    """How many ranks are in each status now (`rank_statuses`), sorted: what changes when a live job's
    ranks stall or finish though no record was written (the dashboard redraws on it)."""
    return sorted(Counter(rank_statuses(run).values()).items())


def rank_hosts(run: LiveRun) -> dict[int, str]:
    """The host each rank ran on (its rank.json; "?" when unreadable), read once per run."""
    def compute() -> dict[int, str]:
        return {r: str(run.reader.rank_info(r).get("host") or "?") for r in run.ranks()}

    return run.cached(("rank_hosts", len(run.ranks())), (), compute)


def straggler_scores(run: LiveRun, *, window: int = 20, at: int | None = None) -> dict[int, float]:
    """Per rank, over the window: how many ms per step it holds the job up. For a flagged straggler,
    the median lead over the slowest *other* rank (`Verdict.lead_ms`) on the measure that flagged it,
    the figure its reason quotes; for any other rank, the largest such lead over the straggler measures
    (each section and own work with waits taken out, forward+data+optimizer, step time). 0 for a rank
    that is not the slowest most of the time, whatever the noise; what the rank tables sort by. A ratio
    would not do: a rank slowed in one section can have the same own work as its victims (the 4-rank
    sample: 1.02× own work, data 3.2×, 41 ms a step). NaN with fewer than two ranks."""
    def compute() -> dict[int, float]:
        ranks = run.ranks()
        steps = window_steps(run, window=window, at=at)
        if len(ranks) < 2 or len(steps) == 0:
            return {r: float("nan") for r in ranks}
        best = np.zeros(len(ranks))
        for _, _, verdicts in measure_verdicts(run, window=window, at=at):
            leads = np.array([v.lead_ms if v.steps else 0.0 for v in verdicts])
            best = np.fmax(best, np.nan_to_num(leads, nan=0.0))
        scores = {r: float(b) for r, b in zip(ranks, best)}
        for rank, (_, v) in flagging_verdicts(run, window=window, at=at).items():
            scores[rank] = v.lead_ms
        return scores

    return run.cached(("straggler_scores", window, at), ("timing",), compute)


def by_node(table: pd.DataFrame) -> pd.DataFrame:
    """A rank table's rows grouped by node, the node holding the highest straggler score first, and
    within a node by score, highest first (flagged stragglers ahead of any score; ties by rank)."""
    if table.empty or "node" not in table:
        return table
    node = table["node"].fillna("?")
    flagged = table["straggler"].astype(bool)
    score = table["straggler_score"].astype(float).fillna(-np.inf)
    keyed = table.assign(_nflag=flagged.groupby(node).transform("max"), _nworst=score.groupby(node).transform("max"),
                         _node=node, _flag=flagged, _score=score)
    keys = ["_nflag", "_nworst", "_node", "_flag", "_score", "rank"]
    return keyed.sort_values(keys, ascending=[False, False, True, False, False, True],
                             kind="stable").drop(columns=keys[:-1])


def rank_summary(table: pd.DataFrame) -> pd.DataFrame:
    """min / median / max over ranks of each numeric column of a `rank_table`."""
    num = table[NUMERIC].astype(float)
    return pd.DataFrame({"min": num.min(), "median": num.median(), "max": num.max()}).T


def step_time_histories(run: LiveRun, *, last: int = 60, at: int | None = None) -> dict[int, np.ndarray]:
    """The last `last` step times (ms) at or before `at` of every rank, oldest first (for sparklines)."""
    def compute() -> dict[int, np.ndarray]:
        totals = phase_ms(run, ("total",))
        if at is not None:
            totals = totals[totals["step"] <= at]
        return {int(r): g["ms"].to_numpy(dtype=np.float64)[-last:] for r, g in totals.groupby("rank")}

    return run.cached(("step_time_histories", last, at), ("timing",), compute)


def compute_ms(run: LiveRun, *, window: int = 20, at: int | None = None) -> dict[int, float]:
    """Per rank: median of forward + data + optimizer ms over the window of `window_steps(window, at)`."""
    return _window_median(phase_ms(run, COMPUTE_PHASES), window_steps(run, window=window, at=at))
