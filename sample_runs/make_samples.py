"""Regenerate the shipped sample runs (deterministic: fixed seeds, one torch thread).

    .venv/bin/python sample_runs/make_samples.py [--only NAME] [--out sample_runs]

- `healthy-moe`: the engine's `debug_v3` model (DeepSeek-V3 routing with balance bias, 3 layers)
  trained with every probe, heavy probes sampled every 10 steps.
- `faults`: the `debug` model with five planted faults, each recorded in the run's config under
  `planted_faults` and, as what `inspector summary` has to name, under `expected_findings`:
  one layer's learning rate spiked for one step (its update 1000x, `update_spike.py`) so that the loss
  jumps and `inspector explain` must name that layer first, one weight's gradient multiplied by 1000 for one
  step (the clipping hides it from the update, not from the Inspector), a NaN from a known module at
  a known step (the step is then undone, as trainers that skip non-finite steps do), an expert that
  the router never picks from some step on, and an attention head whose queries are scaled up until
  it collapses (and stays collapsed).
- `straggler-4rank`: four ranks under torchrun (gloo), rank 2 sleeping in every forward.
- `hf-llama-faults`, `hf-bert-faults`, `healthy-llama`: tiny random-init Hugging Face models, see
  `hf_samples.py`.
- `inference`: the `debug_v3` model trained 150 steps, then serving 24 corpus prompts through the
  engine's batching scheduler, 4 at a time (every sixth asks for 60 tokens, the rest 24), recorded
  in inference mode: requests queue, latencies spread, expert load by stage, attention of every
  4th iteration's chosen token with the tokens' text.
- `long-context-32k`: the `debug` model trained 150 steps on 64-token windows, then one forward of
  32,768 tokens of the same text with the attention probe on: exact statistics over every query row,
  pooled 128×128 maps, the last query's full row, every head's distance profile.
`tests/faults/` checks every expected finding and that the healthy runs raise no alarm;
`benchmarks/fault_suite.py` prints the recall / false-alarm table.
Timings differ from machine to machine; every recorded number that is not a time is reproducible.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import hf_samples
from update_spike import UpdateSpike
import inspector
from inspector_engine.config import get_config
from inspector_engine.training import TrainConfig, Trainer
from inspector.demo import RecordingCallback

HERE = Path(__file__).resolve().parent
EVERY = {"attention": 10, "activations": 10, "gradients": 10, "experts": 5}

FAULTS = {
    "lr_spike": {"step": 60, "layer": "layers.0.ffn", "factor": 1000.0},
    "exploding_grad": {"step": 40, "parameter": "layers.0.ffn.w2.weight", "factor": 1000.0},
    "nan": {"step": 90, "module": "layers.0.ffn"},
    "starved_expert": {"from_step": 20, "module": "layers.1.ffn.router", "expert": 5},
    "collapsed_head": {"from_step": 50, "module": "layers.1.attn.qk_capture", "layer": 1, "head": 2, "scale": 40.0},
}


class FaultPlanter:
    """Forward hooks and a trainer callback that plant the `FAULTS` at their steps."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.snapshot: dict[str, Any] | None = None
        modules = dict(trainer.model.named_modules())
        f = FAULTS
        modules[f["nan"]["module"]].register_forward_hook(self._nan)
        modules[f["starved_expert"]["module"]].register_forward_hook(self._starve)
        modules[f["collapsed_head"]["module"]].register_forward_hook(self._collapse)
        dict(trainer.model.named_parameters())[f["exploding_grad"]["parameter"]].register_hook(self._explode)
        spike = f["lr_spike"]
        UpdateSpike(trainer.model, trainer.optimizer, layer=spike["layer"], step=spike["step"], factor=spike["factor"],
                    current_step=lambda: trainer.step)

    def _explode(self, grad: torch.Tensor) -> torch.Tensor | None:
        if self.trainer.step == FAULTS["exploding_grad"]["step"]:
            return grad * FAULTS["exploding_grad"]["factor"]
        return None

    def _nan(self, module: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        if self.trainer.step == FAULTS["nan"]["step"] and module.training:
            out = out.clone()
            out[0, 0, 0] = float("nan")
            return out
        return None

    def _starve(self, router: torch.nn.Module, args: Any, out: tuple) -> tuple | None:
        if self.trainer.step < FAULTS["starved_expert"]["from_step"]:
            return None
        scores_NE, _, indices_NK = out
        select_NE = scores_NE.clone()
        select_NE[:, FAULTS["starved_expert"]["expert"]] = float("-inf")
        indices_NK = select_NE.topk(indices_NK.shape[1], dim=-1).indices
        weights_NK = scores_NE.gather(1, indices_NK)
        if router.norm_topk_prob:
            weights_NK = weights_NK / weights_NK.sum(-1, keepdim=True)
        return scores_NE, weights_NK * router.route_scale, indices_NK

    def _collapse(self, module: torch.nn.Module, args: Any, out: tuple) -> tuple | None:
        c = FAULTS["collapsed_head"]
        if self.trainer.step < c["from_step"]:
            return None
        q_BHTD, k_BHSD = out
        q_BHTD = q_BHTD.clone()
        q_BHTD[:, c["head"]] *= c["scale"]
        return q_BHTD, k_BHSD

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        """Undo the NaN step from a snapshot."""
        nan_step = FAULTS["nan"]["step"]
        if step == nan_step:
            self.snapshot = {"model": copy.deepcopy(trainer.model.state_dict()),
                             "optimizer": copy.deepcopy(trainer.optimizer.state_dict())}
        elif step == nan_step + 1 and self.snapshot is not None:
            trainer.model.load_state_dict(self.snapshot["model"])
            trainer.optimizer.load_state_dict(self.snapshot["optimizer"])
            self.snapshot = None


def expected_findings() -> list[dict[str, Any]]:
    """What `inspector summary` has to name in the `faults` run (checked by tests/faults)."""
    f = FAULTS
    head = f["collapsed_head"]
    return [
        {"fault": "loss spike from one layer's LR jump", "check": "anomaly", "kind": "loss_spike",
         "step": f["lr_spike"]["step"] + 1, "tolerance": 1},
        {"fault": "the spike's root cause: the layer whose update jumped", "check": "explain",
         "step": f["lr_spike"]["step"] + 1, "tolerance": 1, "module": f["lr_spike"]["layer"]},
        {"fault": "exploding gradient under clipping", "check": "anomaly", "kind": "exploding_grad",
         "step": f["exploding_grad"]["step"], "tolerance": 0,
         "module": f["exploding_grad"]["parameter"].rpartition(".")[0]},
        {"fault": "NaN from a known module at a known step", "check": "anomaly", "kind": "nonfinite_activation",
         "step": f["nan"]["step"], "tolerance": 0, "module": f["nan"]["module"]},
        {"fault": "an expert that starves", "check": "starved_expert", "module": f["starved_expert"]["module"],
         "expert": f["starved_expert"]["expert"], "step": f["starved_expert"]["from_step"], "tolerance": 60},
        {"fault": "a head that collapses and stays collapsed", "check": "collapsed_head", "layer": head["layer"],
         "head": head["head"], "step": head["from_step"], "tolerance": 10},
    ]


def train(name: str, config: str, steps: int, out: Path, *, faults: bool = False, n_layers: int | None = None) -> None:
    """Train one sample run into `out` (removed first)."""
    shutil.rmtree(out, ignore_errors=True)
    torch.set_num_threads(1)
    overrides = {"n_layers": n_layers} if n_layers else {}
    model_cfg = get_config(config, **overrides)
    train_cfg = TrainConfig(steps=steps, seed=0, batch_size=8, seq_len=64, eval_every=20, progress=True)
    trainer = Trainer(model_cfg, train_cfg)
    if faults:
        planter = FaultPlanter(trainer)      # before watch: the probes must see the planted outputs
    # Expert load every step in the faults run: starvation is judged over consecutive records.
    every = {**EVERY, "experts": 1} if faults else EVERY
    watch = inspector.watch(trainer.model, out, optimizer=trainer.optimizer, probes="all", every=every,
                            max_attention_rows=64, name=name,
                            config={"model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
                                    "engine_config": config, **({"planted_faults": FAULTS, "expected_findings": expected_findings()} if faults else {})})
    trainer.callbacks.append(RecordingCallback(watch))
    if faults:
        trainer.callbacks.insert(0, planter)
    try:
        trainer.run()
    finally:
        watch.close()
        trainer.close()


def straggler(out: Path, steps: int = 40) -> None:
    """The 4-rank run with rank 2 slowed down, through the demo's own torchrun launcher."""
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "inspector.cli", "demo", "--ranks", "4", "--slow-rank", "2",
                    "--config", "debug", "--steps", str(steps), "--batch-size", "4", "--seq-len", "64",
                    "--out", str(out), "--no-progress", "--no-dash"], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})


def long_context(out: Path, tokens: int = 32_768, steps: int = 150) -> None:
    """A short-trained `debug` model read at `tokens` tokens with only the attention probe on."""
    import dataclasses

    shutil.rmtree(out, ignore_errors=True)
    torch.set_num_threads(2)
    model_cfg = dataclasses.replace(get_config("debug"), max_seq_len=tokens)
    train_cfg = TrainConfig(steps=steps, seed=0, batch_size=8, seq_len=64, eval_every=0, progress=True)
    trainer = Trainer(model_cfg, train_cfg)
    try:
        trainer.run()
        model = trainer.model.eval()
        text = trainer.train_tokens.long()
        x_1T = text[:tokens].view(1, -1) if len(text) >= tokens else text.repeat(tokens // len(text) + 1)[:tokens].view(1, -1)
        watch = inspector.watch(model, out, probes=["attention"], every=1, max_attention_rows=128,
                                name="long-context-32k", hang_after_s=None,
                                config={"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "tokens": tokens})
        with torch.no_grad():
            model(x_1T.to(next(model.parameters()).device))
        watch.step()
        watch.close()
    finally:
        trainer.close()


def inference(out: Path, steps: int = 150, requests: int = 24) -> None:
    """A short-trained `debug_v3` model serving `requests` corpus prompts of 8-192 bytes through the
    engine's batching scheduler (4 rows at a time, so requests queue) in inference mode."""
    from inspector.generate_demo import corpus_prompts
    from inspector_engine.inference import BatchScheduler, SamplingParams
    from inspector_engine.tokenizer import ByteTokenizer

    shutil.rmtree(out, ignore_errors=True)
    torch.set_num_threads(1)
    model_cfg = get_config("debug_v3")
    train_cfg = TrainConfig(steps=steps, seed=0, batch_size=8, seq_len=64, eval_every=0, progress=True)
    trainer = Trainer(model_cfg, train_cfg)
    try:
        trainer.run()
        model = trainer.model.eval()
        tok = ByteTokenizer()
        sched = BatchScheduler(model, max_batch_size=4, max_batch_tokens=4096)
        watch = inspector.watch(model, out, mode="inference", tokenizer=tok, every={"attention": 4}, name="inference",
                                hang_after_s=None, config={"model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
                                                           "command": "generate", "max_batch_size": 4})
        watch.observe(sched)
        for i, prompt in enumerate(corpus_prompts(requests, 0)):
            sched.submit(tok.encode(prompt), 24 if i % 6 else 60, SamplingParams(0.8, 0, 1.0, i))
        sched.run()
        watch.close()
    finally:
        trainer.close()


SAMPLES = {
    "inference": inference,
    "long-context-32k": long_context,
    "healthy-moe": lambda out: train("healthy-moe", "debug_v3", 200, out, n_layers=3),
    "faults": lambda out: train("faults", "debug", 120, out, faults=True),
    "straggler-4rank": straggler,
    "hf-llama-faults": hf_samples.llama_faults,
    "hf-bert-faults": hf_samples.bert_faults,
    "healthy-llama": hf_samples.healthy_llama,
}


def main() -> int:
    """Regenerate every sample run (or `--only` one) under `--out`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(SAMPLES))
    p.add_argument("--out", default=str(HERE))
    a = p.parse_args()
    for name, make in SAMPLES.items():
        if a.only and name != a.only:
            continue
        print(f"making {name}", flush=True)
        make(Path(a.out) / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
