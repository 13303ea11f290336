"""`activation_drift`: a module whose output leaves its healthy range is reported once, at onset,
and a lasting drift never becomes the baseline; a healthy engine run raises nothing."""
from __future__ import annotations

from pathlib import Path

import torch

import inspector
from inspector_engine.config import get_config
from inspector_engine.training import TrainConfig, Trainer
from inspector.probes.activation_drift import DriftTracker
from inspector.store.reader import RunReader
from tests.watched_training import train_watched


def test_tracker_flags_a_lasting_drift_once_and_clears_on_recovery() -> None:
    t = DriftTracker()
    healthy = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02]
    assert all(t.update("m", -p, p) is None for p in healthy)
    assert t.update("m", -1.0, 8.0) is not None          # 8x the healthy median: onset
    assert all(t.update("m", -1.0, 8.0 * 2 ** k) is None for k in range(1, 30))   # still drifted, not re-reported
    assert t.modules["m"].drifted and max(t.modules["m"].healthy.values) < 2.0      # never learned
    assert t.update("m", -1.0, 1.0) is None and not t.modules["m"].drifted


def _train(out: Path, scale_from: int | None) -> list[tuple[int, str]]:
    torch.manual_seed(0)
    trainer = Trainer(get_config("debug"), TrainConfig(steps=40, seed=0, batch_size=4, seq_len=32, eval_every=0,
                                                       progress=False))
    if scale_from is not None:
        def grow(module: torch.nn.Module, args: object, y: torch.Tensor) -> torch.Tensor | None:
            return y * 1.3 ** (trainer.step - scale_from + 1) if trainer.step >= scale_from else None
        trainer.model.layers[0].ffn.register_forward_hook(grow)
    watch = inspector.watch(trainer.model, out, optimizer=trainer.optimizer, probes=["activations"],
                            every={"activations": 2})
    train_watched(trainer, watch, steps=40)
    with RunReader(out) as reader:
        df = reader.to_pandas("anomaly")
    df = df[df["kind"] == "activation_drift"] if not df.empty else df
    return [(int(r.step), r.module) for r in df.itertuples()]


def test_drift_is_named_at_its_module_soon_after_onset_and_healthy_run_is_quiet(tmp_path: Path) -> None:
    found = _train(tmp_path / "drift", scale_from=24)
    assert found[0][1] == "layers.0.ffn" and 24 <= found[0][0] <= 32     # the origin is named first
    assert len({m for _, m in found}) == len(found)                     # once per module
    assert all(step > found[0][0] for step, _ in found[1:])             # modules downstream drift later
    assert _train(tmp_path / "healthy", scale_from=None) == []
