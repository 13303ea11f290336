"""`inspector demo`: train the built-in DeepSeek-style engine with the Inspector recording.

This module and the tests are the only places that join `engine` and `inspector`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import inspector
from inspector.cli_format import human_bytes


class RecordingCallback:
    """Engine trainer callback that forwards each step's metrics to a `Watch`."""

    def __init__(self, watch: "inspector.Watch") -> None:
        self.watch = watch

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        """Record the step's metrics (loss, lr, grad norm, tokens/s, balance losses)."""
        self.watch.step(**metrics)

    def on_eval(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        """Record evaluation metrics under `eval/`."""
        for name, value in metrics.items():
            self.watch.log(name if name.startswith("eval") else f"eval/{name}", value, step=max(step - 1, 0))


def run_demo(*, config: str = "tiny", steps: int = 300, out: str | None = None, seed: int = 0,
             batch_size: int | None = None, seq_len: int | None = None, progress: bool = True) -> int:
    """Train `config` for `steps` steps, recording into `out` (default runs/demo-<time>); returns 0."""
    from engine.config import get_config
    from engine.training import TrainConfig, Trainer

    run_dir = Path(out) if out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    model_cfg = get_config(config)
    train_cfg = TrainConfig(steps=steps, seed=seed, progress=progress, eval_every=max(10, steps // 10))
    if batch_size:
        train_cfg.batch_size = batch_size
    if seq_len:
        train_cfg.seq_len = seq_len
    trainer = Trainer(model_cfg, train_cfg)
    watch = inspector.watch(trainer.model, run_dir, optimizer=trainer.optimizer, name=run_dir.name,
                            config={"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "engine_config": config})
    trainer.callbacks.append(RecordingCallback(watch))
    print(f"inspector demo: training engine config {config!r} for {steps} steps, recording to {run_dir}")
    try:
        trainer.run()
    except KeyboardInterrupt:
        print("inspector demo: interrupted; the run so far is kept")
    finally:
        watch.close()
        trainer.close()
    reader = inspector.open_run(run_dir)
    loss = reader.to_pandas("scalar", names=["loss"])["value"]
    print(f"inspector demo: {reader.status()} run, {reader.last_step() + 1} steps, "
          f"{human_bytes(reader.size_bytes())} in {run_dir}")
    if len(loss) >= 2:
        print(f"inspector demo: loss {loss.iloc[0]:.3f} -> {loss.iloc[-1]:.3f}")
    print(f"inspect it with: inspector info {run_dir}   (or inspector ls {run_dir.parent})")
    return 0
