"""Activation histograms follow drifting data and stay exact (numpy on outputs the test captures with
its own hooks); NaN/inf are counted; the dead-layer detector flags a planted die-off at its onset, keeps
the flag while the layer stays dead, and stays quiet on healthy runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import inspector
from tests.activation_runs import (
    DRIFT_FROM, DRIFT_MODULE, NAN_MODULE, NAN_STEP, PLANTED_NONFINITE, STEPS, DriftRun, write_drift_run,
)
from tests.watched_training import train_watched

BINS = 64


@pytest.fixture(scope="module")
def drift(tmp_path_factory) -> tuple[DriftRun, object, object]:
    run = write_drift_run(tmp_path_factory.mktemp("drift") / "run")
    r = inspector.open_run(run.path)
    return run, r.to_pandas("histogram"), r.to_pandas("activation_stats")


def _near_edges(x: np.ndarray, lo: float, hi: float) -> int:
    """Values within 1e-4 of a bin width of a bin edge: float32 (probe) and float64 (numpy) may bin
    these on either side."""
    pos = (x - lo) / (hi - lo) * BINS
    return int((np.abs(pos - np.round(pos)) < 1e-4).sum())


def test_recorded_histograms_equal_numpy_before_and_after_the_drift(drift) -> None:
    run, hist, stats = drift
    assert sorted(hist["step"].unique()) == list(range(STEPS))
    for s in range(STEPS):
        for name in run.modules:
            x = run.captured[s][name]
            fin = x[np.isfinite(x)].ravel()
            row = hist[(hist["step"] == s) & (hist["name"] == f"activations/{name}")].iloc[0]
            lo, hi = row["lo"], row["hi"]
            want, _ = np.histogram(fin, bins=BINS, range=(lo, hi))
            counts = np.asarray(row["counts"])
            assert np.abs(counts - want).sum() <= 2 * _near_edges(fin, lo, hi), (s, name)
            assert row["underflow"] == (fin < lo).sum() == 0 and row["overflow"] == (fin > hi).sum() == 0
            assert counts.sum() == fin.size
            st = stats[(stats["step"] == s) & (stats["name"] == name)].iloc[0]
            assert st["nonfinite"] == x.size - fin.size


def test_drifted_module_stays_inside_its_recorded_range(drift) -> None:
    run, hist, _ = drift
    rows = hist[hist["name"] == f"activations/{DRIFT_MODULE}"].set_index("step")
    first = run.captured[0][DRIFT_MODULE]
    frozen = []
    for s in range(DRIFT_FROM, STEPS):
        x = run.captured[s][DRIFT_MODULE].ravel()
        frozen.append(np.mean((x >= first.min()) & (x <= first.max())))
        lo, hi = rows.loc[s, "lo"], rows.loc[s, "hi"]
        inside = np.mean((x >= lo) & (x <= hi))  # numpy's share of the values inside the recorded range
        assert inside >= 0.99, (s, inside)
        assert np.asarray(rows.loc[s, "counts"]).sum() / x.size >= 0.99
    # the planted drift is real: step 0's range (what a range fixed at warm-up would keep) holds a
    # shrinking share of the drifted values, a few percent at the end
    assert frozen[-1] < 0.05 and frozen[-1] < frozen[0], frozen


def test_nonfinite_values_are_counted_not_binned(drift) -> None:
    run, hist, stats = drift
    st = stats[(stats["step"] == NAN_STEP) & (stats["name"] == NAN_MODULE)].iloc[0]
    assert st["nonfinite"] == PLANTED_NONFINITE
    row = hist[(hist["step"] == NAN_STEP) & (hist["name"] == f"activations/{NAN_MODULE}")].iloc[0]
    x = run.captured[NAN_STEP][NAN_MODULE]
    assert np.asarray(row["counts"]).sum() == x.size - PLANTED_NONFINITE
    assert np.isfinite(row["lo"]) and np.isfinite(row["hi"])


# ---- dead layers -------------------------------------------------------------------------------

def _bert(seed: int = 0):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, hidden_act="relu", max_position_embeddings=32)
    torch.manual_seed(seed)
    return BertModel(cfg)


def _train_bert(path: Path, steps: int, plant: dict[int, float] | None = None, every: int = 1):
    """Train a tiny random-init BERT with ReLU; `plant` sets layer 0's intermediate bias at given steps."""
    model = _bert()
    bias = model.encoder.layer[0].intermediate.dense.bias
    saved = bias.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    w = inspector.watch(model, path, probes=["activations"], every={"activations": every})
    gen = torch.Generator().manual_seed(0)
    for s in range(steps):
        if plant and s in plant:
            with torch.no_grad():
                bias.copy_(saved + plant[s])
        tokens = torch.randint(0, 100, (4, 12), generator=gen)
        opt.zero_grad()
        model(tokens).last_hidden_state.pow(2).mean().backward()
        opt.step()
        w.step()
    w.close()
    r = inspector.open_run(path)
    return r.to_pandas("activation_stats"), r.to_pandas("anomaly")


def _dead(anomalies):
    return anomalies[anomalies["kind"] == "dead_layer"] if len(anomalies) else anomalies


DIES, RECOVERS, STEPS_BERT = 6, 40, 46
DEAD_MODULE = "encoder.layer.0.intermediate"


def test_planted_dead_relu_is_flagged_at_onset_and_while_it_stays_dead(tmp_path: Path) -> None:
    assert RECOVERS - DIES > 20 + 2  # dead longer than the baseline's window (HISTORY) and CONFIRM together
    stats, anomalies = _train_bert(tmp_path / "run", STEPS_BERT, plant={DIES: -100.0, RECOVERS: 0.0})
    frac = stats[stats["name"] == DEAD_MODULE].set_index("step")["dead_frac"]
    assert (frac.loc[DIES:RECOVERS - 1] == 1.0).all() and (frac.loc[:DIES - 1] < 0.2).all()
    assert (frac.loc[RECOVERS:] < 0.2).all()  # the bias restored: alive again
    dead = _dead(anomalies)
    assert set(dead["module"]) == {DEAD_MODULE}
    # flagged with its onset step, and on every sampled step of the dead period (not one more)
    assert sorted(dead["step"].tolist()) == list(range(DIES, RECOVERS))
    onset = dead[dead["step"] == DIES].iloc[0]
    assert "from step 6 on" in onset["message"]


def test_healthy_relu_model_has_no_dead_layer(tmp_path: Path) -> None:
    stats, anomalies = _train_bert(tmp_path / "run", 30)
    assert stats["dead_frac"].max() < 0.5
    assert len(_dead(anomalies)) == 0


def test_healthy_engine_run_has_no_dead_layer(tmp_path: Path) -> None:
    from inspector_engine.config import get_config
    from inspector_engine.training.config import TrainConfig
    from inspector_engine.training.trainer import Trainer

    trainer = Trainer(get_config("debug"), TrainConfig(steps=60, batch_size=4, seq_len=32, eval_every=0,
                                                       warmup_steps=5, seed=0, device="cpu", num_threads=1))
    w = inspector.watch(trainer.model, tmp_path / "run", optimizer=trainer.optimizer, probes=["activations"],
                        every={"activations": 5})
    train_watched(trainer, w)
    r = inspector.open_run(tmp_path / "run")
    stats, anomalies = r.to_pandas("activation_stats"), r.to_pandas("anomaly")
    assert sorted(stats["step"].unique()) == list(range(0, 60, 5))
    assert len(_dead(anomalies)) == 0
