"""Replaying a recorded step: the generator states the `replay` probe kept, set back.

    states = inspector.restore_rng("runs/job", step=61)   # before re-running step 61's data and forward
    assert inspector.fingerprint(x_BT) == inspector.batch_at("runs/job", 61)[0]

The states are read from the run's `rng_state` rows (written for the steps anomalies were reported
at), never unpickled: torch's as raw generator bytes, Python's and NumPy's as JSON.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from inspector.store.reader import open_run


class NoRecordedState(LookupError):
    """The run holds no generator state for that step (no anomaly was reported there)."""


def recorded_states(run_dir: str | Path, step: int, rank: int = 0) -> dict[str, bytes]:
    """{generator: state bytes} recorded for `step` on `rank`."""
    with open_run(run_dir) as run:
        rows = run.to_pandas("rng_state", ranks=[rank]) if "rng_state" in run.kinds() else None
    if rows is None or rows.empty or not (rows["step"] == step).any():
        have = sorted(set(rows["step"])) if rows is not None and not rows.empty else []
        raise NoRecordedState(f"{run_dir}: no generator state recorded for step {step} on rank {rank} "
                              f"(recorded for steps: {have or 'none'}; states are kept at anomalies)")
    at = rows[rows["step"] == step].drop_duplicates("generator", keep="last")
    return dict(zip(at["generator"], at["state"]))


def restore_rng(run_dir: str | Path, step: int, rank: int = 0) -> list[str]:
    """Set torch's (CPU and each recorded CUDA device's), Python's and NumPy's generators to their
    state at the start of `step`; returns the generators restored."""
    done = []
    for name, state in recorded_states(run_dir, step, rank).items():
        if name == "torch.cpu":
            torch.set_rng_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
        elif name.startswith("torch.cuda:"):
            index = int(name.rpartition(":")[2])
            if not torch.cuda.is_available() or index >= torch.cuda.device_count():
                continue
            torch.cuda.set_rng_state(torch.frombuffer(bytearray(state), dtype=torch.uint8), index)
        elif name == "python.random":
            version, internal, gauss = json.loads(state)
            random.setstate((version, tuple(internal), gauss))
        elif name == "numpy.random":
            kind, keys, pos, has_gauss, cached = json.loads(state)
            np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        else:
            continue
        done.append(name)
    return done


def batch_at(run_dir: str | Path, step: int, rank: int = 0) -> list[int]:
    """The fingerprints of the forwards (micro-batches, in order) `rank` trained on at `step`."""
    with open_run(run_dir) as run:
        rows = run.to_pandas("batch", ranks=[rank]) if "batch" in run.kinds() else None
    if rows is None or rows.empty:
        return []
    at = rows[rows["step"] == step].sort_values("micro")
    return [int(v) for v in at["fingerprint"]]
