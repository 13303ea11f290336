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

from inspector.views.downsample import bin_columns
from inspector.views.live import LiveRun
from inspector.views.steps import nearest_at_or_before

TRAIN, INFERENCE = "train", "inference"
PHASE_KINDS = {TRAIN: "expert_load", INFERENCE: "expert_load_inference"}
"""The record kind holding each phase's expert load."""
_KINDS = tuple(PHASE_KINDS.values())


def expert_phases(run: LiveRun) -> list[str]:
    """The phases ("train", "inference") with recorded expert load, training first."""
    return [p for p, kind in PHASE_KINDS.items() if not run.frame(kind).empty]


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


def _rows(run: LiveRun, rank: int, phase: str | None) -> pd.DataFrame:
    df = expert_load_frame(run, phase=phase)
    return df[df["rank"] == rank] if not df.empty else df


def expert_steps(run: LiveRun, rank: int = 0, *, phase: str | None = None) -> list[int]:
    """Sorted steps at which `rank` recorded expert load of `phase`."""
    resolved = resolve_phase(run, phase)
    return run.cached(("expert_steps", rank, resolved), _KINDS,
                      lambda: sorted(_rows(run, rank, resolved)["step"].unique().tolist()))


def _at(run: LiveRun, step: int, rank: int, phase: str | None) -> pd.DataFrame:
    at = nearest_at_or_before(expert_steps(run, rank, phase=phase), step)
    if at is None:
        return pd.DataFrame()
    df = _rows(run, rank, phase)
    return df[df["step"] == at].sort_values("layer")


def expert_counts(run: LiveRun, *, step: int, rank: int = 0,
                  phase: str | None = None) -> tuple[list[int], np.ndarray]:
    """(layers, tokens per expert [layers, experts]) at the nearest recorded step ≤ `step`."""
    rows = _at(run, step, rank, phase)
    if rows.empty:
        return [], np.zeros((0, 0), dtype=np.int64)
    counts = [np.asarray(c, dtype=np.int64) for c in rows["counts"]]
    width = max(len(c) for c in counts)
    mat = np.zeros((len(counts), width), dtype=np.int64)
    for i, c in enumerate(counts):
        mat[i, :len(c)] = c
    return rows["layer"].astype(int).tolist(), mat


def imbalance_series(run: LiveRun, *, rank: int = 0, phase: str | None = None) -> pd.DataFrame:
    """Per recorded step and layer: imbalance (max/mean), cv, router entropy, aux loss."""
    cols = ["step", "layer", "imbalance", "cv", "router_entropy", "aux_loss"]
    df = _rows(run, rank, phase)
    if df.empty:
        return pd.DataFrame(columns=cols)
    return df[cols].sort_values(["layer", "step"]).reset_index(drop=True)


def expert_bias(run: LiveRun, *, step: int, rank: int = 0,
                phase: str | None = None) -> tuple[list[int], np.ndarray | None]:
    """(layers, balance bias [layers, experts]) at the nearest step ≤ `step`; None if the router has none."""
    rows = _at(run, step, rank, phase)
    if rows.empty or rows["bias"].isna().all():
        return (rows["layer"].astype(int).tolist() if not rows.empty else []), None
    biases = [np.asarray(b if b is not None else [], dtype=np.float64) for b in rows["bias"]]
    width = max(len(b) for b in biases)
    mat = np.full((len(biases), width), np.nan)
    for i, b in enumerate(biases):
        mat[i, :len(b)] = b
    return rows["layer"].astype(int).tolist(), mat


def expert_share_over_time(run: LiveRun, *, layer: int, rank: int = 0, max_steps: int = 500,
                           phase: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, share of tokens [experts, steps]) of one MoE layer; at most `max_steps` columns (bins averaged).

    Added by the dashboard (experts page: "change over time").
    """
    resolved = resolve_phase(run, phase)

    def compute() -> tuple[np.ndarray, np.ndarray]:
        df = _rows(run, rank, resolved)
        if df.empty:
            return np.empty(0, np.int64), np.zeros((0, 0))
        sel = df[df["layer"] == layer].drop_duplicates("step", keep="last").sort_values("step")
        if sel.empty:
            return np.empty(0, np.int64), np.zeros((0, 0))
        counts = [np.asarray(c, dtype=np.float64) for c in sel["counts"]]
        width = max(len(c) for c in counts)
        mat = np.zeros((width, len(counts)))
        for i, c in enumerate(counts):
            mat[:len(c), i] = c
        totals = mat.sum(0)
        share = np.divide(mat, totals, out=np.zeros_like(mat), where=totals > 0)
        return bin_columns(sel["step"].to_numpy(np.int64), share, max_steps, "mean")

    return run.cached(("expert_share_over_time", layer, rank, max_steps, resolved), _KINDS, compute)
