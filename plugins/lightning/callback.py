"""`InspectorCallback`: records a `lightning.Trainer` run with `inspector.watch`."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Mapping

import lightning
import torch

import inspector
from inspector_plugins.watch_options import WatchOptions


class InspectorCallback(WatchOptions, lightning.Callback):
    """Attach the Inspector at fit start (first optimizer), record the training loss and logged
    metrics after each batch, close at fit end. `run_dir` defaults to `<log_dir>/inspector`.
    Validation loops (the sanity check too) are marked as the "eval" phase (`Watch.phase`), so
    their time is recorded apart from the training steps'."""

    _eval: contextlib.ExitStack | None = None

    def on_fit_start(self, trainer: "lightning.Trainer", pl_module: "lightning.LightningModule") -> None:
        """Start recording the module; steps advance with its (first) optimizer."""
        if self.watch is not None:
            return
        run_dir = Path(self.run_dir) if self.run_dir else Path(trainer.log_dir or trainer.default_root_dir) / "inspector"
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.watch = inspector.watch(pl_module, run_dir, optimizer=optimizer, probes=self.probes, every=self.every,
                                     rank=trainer.global_rank, world_size=trainer.world_size, **self.watch_options)

    def on_train_batch_end(self, trainer: "lightning.Trainer", pl_module: "lightning.LightningModule",
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        """Record the batch's loss (a tensor: read later, no sync) and the scalars logged so far."""
        if self.watch is None:
            return
        scalars: dict[str, Any] = {}
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            scalars["loss"] = loss.detach()
        for name, value in trainer.callback_metrics.items():
            if name != "loss" and isinstance(value, torch.Tensor) and value.numel() == 1:
                scalars[name] = value.detach()
        if scalars:
            self.watch.step(**scalars)

    def on_validation_start(self, trainer: "lightning.Trainer", pl_module: "lightning.LightningModule") -> None:
        """A validation loop starts: its time is eval, not the next training step's."""
        if self.watch is not None and self._eval is None:
            self._eval = contextlib.ExitStack()
            self._eval.enter_context(self.watch.phase("eval"))

    def on_validation_end(self, trainer: "lightning.Trainer", pl_module: "lightning.LightningModule") -> None:
        """The validation loop ended."""
        if self._eval is not None:
            self._eval.close()
            self._eval = None

    def on_fit_end(self, trainer: "lightning.Trainer", pl_module: "lightning.LightningModule") -> None:
        """Remove every hook and close the run."""
        self.on_validation_end(trainer, pl_module)
        self.close_watch()
