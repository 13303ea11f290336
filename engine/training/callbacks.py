"""Trainer callbacks: duck-typed objects; every hook method is optional.

Hooks: ``on_train_start(trainer)``, ``on_step_end(trainer, step, metrics)``,
``on_eval(trainer, step, metrics)``, ``on_train_end(trainer)``. ``step`` is the number of
optimizer steps completed; ``metrics`` maps names to floats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Callback:
    """Optional base class documenting the hooks; subclassing it is not required."""

    def on_train_start(self, trainer: Any) -> None:
        """Called once when `Trainer.run` starts (after any resume)."""

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        """Called after every optimizer step."""

    def on_eval(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        """Called after every evaluation."""

    def on_train_end(self, trainer: Any) -> None:
        """Called once when `Trainer.run` finishes."""


class JsonlLogger(Callback):
    """Appends one JSON object per step / eval to ``path`` (rank 0 only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _write(self, trainer: Any, record: dict[str, Any]) -> None:
        if trainer.dist.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        self._write(trainer, {"kind": "train", "step": step, **metrics})

    def on_eval(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        self._write(trainer, {"kind": "eval", "step": step, **metrics})
