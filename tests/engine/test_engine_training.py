"""Trainer: loss falls, exact resume, grad accumulation, callbacks, checkpoints, 2-process DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inspector_engine.config import get_config
from inspector_engine.training import TrainConfig, Trainer
from inspector_engine.training.data import TokenStream, split_tokens
from inspector_engine.training.schedule import warmup_cosine

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path | None = None, **kw) -> TrainConfig:
    base = dict(steps=6, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, eval_every=0, progress=False,
                out_dir=str(tmp_path) if tmp_path else None)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_falls_on_debug_within_a_few_dozen_steps() -> None:
    trainer = Trainer(get_config("debug"), _cfg(steps=30, batch_size=8, seq_len=64, warmup_steps=5))
    losses = [m["loss"] for m in trainer.run()]
    assert losses[0] == pytest.approx(math.log(256), abs=0.15)  # uniform over bytes at init
    assert sum(losses[-5:]) / 5 < losses[0] - 1.5
    val = trainer.evaluate()["val_loss"]
    assert val < losses[0] - 1.0


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path: Path) -> None:
    common = dict(grad_accum=2, ckpt_every=3)
    full = Trainer(get_config("debug_v3"), _cfg(tmp_path / "a", **common))
    ref = full.run()
    ckpt = tmp_path / "a" / "ckpt_0000003.pt"
    assert ckpt.exists() and (tmp_path / "a" / "ckpt_0000006.pt").exists()
    resumed = Trainer(get_config("debug_v3"), _cfg(tmp_path / "b", resume=str(ckpt), **common))
    assert resumed.step == 3
    rest = resumed.run()
    assert [m["loss"] for m in rest] == [m["loss"] for m in ref[3:]]  # bit-exact on CPU
    assert [m["grad_norm"] for m in rest] == [m["grad_norm"] for m in ref[3:]]
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), n
    assert torch.count_nonzero(full.model.routers()[0].bias) > 0  # the V3 bias state was resumed too


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    trainer = Trainer(get_config("debug_v3"), _cfg(tmp_path, steps=1))
    trainer.run()
    state = torch.load(tmp_path / "ckpt_0000001.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "data", "rng", "model_config", "train_config", "step"} <= state.keys()
    assert state["step"] == 1 and isinstance(state["rng"]["torch"], torch.Tensor)
    assert trainer.config.resume is None
    again = Trainer(get_config("debug_v3"), _cfg(tmp_path, steps=2, resume="latest"))
    assert again.step == 1


def test_grad_accumulation_matches_one_big_batch() -> None:
    one = Trainer(get_config("debug"), _cfg(steps=3, batch_size=8, grad_accum=1)).run()
    acc = Trainer(get_config("debug"), _cfg(steps=3, batch_size=4, grad_accum=2)).run()
    for a, b in zip(one, acc):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_callbacks_receive_metrics() -> None:
    events: list[tuple] = []

    class Recorder:
        def on_train_start(self, trainer):
            events.append(("start", trainer.step))

        def on_step_end(self, trainer, step, metrics):
            events.append(("step", step, dict(metrics)))

        def on_eval(self, trainer, step, metrics):
            events.append(("eval", step, dict(metrics)))

        def on_train_end(self, trainer):
            events.append(("end", trainer.step))

    class OnlyEnd:  # every hook is optional
        def on_train_end(self, trainer):
            events.append(("only_end",))

    trainer = Trainer(get_config("debug_v3"), _cfg(steps=2, eval_every=2, eval_batches=1), callbacks=[Recorder()])
    trainer.callbacks.append(OnlyEnd())
    trainer.run()
    kinds = [e[0] for e in events]
    assert kinds == ["start", "step", "step", "eval", "end", "only_end"]
    metrics = events[1][2]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "aux_loss", "max_vio"):
        assert isinstance(metrics[key], float), key
    assert events[1][1] == 1 and events[2][1] == 2 and "val_loss" in events[3][2]


def test_lora_finetuning_trains_only_adapters() -> None:
    trainer = Trainer(get_config("debug"), _cfg(steps=2, lora_rank=4))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run()
    for n, p in trainer.model.named_parameters():
        changed = not torch.equal(before[n], p)
        assert changed == ("lora_" in n), n


def test_warmup_cosine_schedule() -> None:
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_token_stream_is_deterministic_and_covers_epochs() -> None:
    tokens = torch.arange(1000, dtype=torch.int64) % 256
    train, val = split_tokens(tokens, 0.1)
    assert len(train) == 900 and torch.equal(torch.cat([train, val]), tokens)
    a, b = TokenStream(train, 16, seed=1), TokenStream(train, 16, seed=1)
    first = a.take(a.n_windows)  # one full epoch
    assert len(set(first.tolist())) == a.n_windows
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.take(7), b.take(7))
    x, y = a.batch(first[:2])
    assert torch.equal(x[:, 1:], y[:, :-1])


def _read_losses(path: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"]


@pytest.mark.multiproc
@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    steps = 4
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "inspector_engine.train", "--config", "debug_v3", "--steps", str(steps), "--batch-size", "4",
           "--seq-len", "32", "--warmup-steps", "2", "--eval-every", "0", "--out", str(tmp_path / "ddp"),
           "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # DDP is built without deprecated arguments (torch >= 2.13 warns once per rank for broadcast_buffers)
    assert "FutureWarning" not in proc.stderr and "broadcast_buffers" not in proc.stderr, proc.stderr[-4000:]
    ddp_losses = _read_losses(tmp_path / "ddp" / "metrics.jsonl")

    single = Trainer(get_config("debug_v3"), _cfg(steps=steps, batch_size=8, warmup_steps=2, device="cpu"))
    ref = single.run()
    assert len(ddp_losses) == steps
    for a, b in zip(ddp_losses, [m["loss"] for m in ref]):
        assert a == pytest.approx(b, rel=1e-5)
    ddp_state = torch.load(tmp_path / "ddp" / f"ckpt_{steps:07d}.pt", weights_only=True)["model"]
    assert ddp_state.keys() == single.model.state_dict().keys()
    for n, p in single.model.state_dict().items():
        torch.testing.assert_close(ddp_state[n], p, rtol=1e-4, atol=1e-5, msg=n)
