"""Seeded loss spikes: the engine's `debug` model trained with one layer's optimizer update made
`factor` times larger at one step (`sample_runs/update_spike.py`, the planter the `faults` sample
uses), recorded with every probe on."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

import inspector
from inspector_engine.config import get_config
from inspector_engine.training import TrainConfig, Trainer
from tests.watched_training import train_watched

EVERY = {"attention": 10, "activations": 10, "gradients": 10, "experts": 5}
_SPEC = importlib.util.spec_from_file_location(
    "update_spike", Path(__file__).resolve().parents[2] / "sample_runs" / "update_spike.py")
update_spike = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(update_spike)


@dataclass(frozen=True)
class PlantedSpike:
    """One layer's update multiplied by `factor` at optimizer step `step` of a run seeded `seed`."""

    layer: str          # a module prefix, e.g. "layers.1.attn"
    step: int
    factor: float
    seed: int = 0


def train_with_spike(out: Path, spike: PlantedSpike, *, steps: int, config: str = "debug") -> Path:
    """Train `config` for `steps` steps with `spike` planted; the run directory."""
    torch.set_num_threads(1)
    trainer = Trainer(get_config(config), TrainConfig(steps=steps, seed=spike.seed, batch_size=8, seq_len=64,
                                                      eval_every=0, progress=False))
    update_spike.UpdateSpike(trainer.model, trainer.optimizer, layer=spike.layer, step=spike.step,
                             factor=spike.factor, current_step=lambda: trainer.step)
    watch = inspector.watch(trainer.model, out, optimizer=trainer.optimizer, probes="all", every=EVERY,
                            max_attention_rows=64, name=out.name, hang_after_s=None,
                            config={"planted_spike": {"layer": spike.layer, "step": spike.step,
                                                      "factor": spike.factor, "seed": spike.seed}})
    train_watched(trainer, watch)
    return out
