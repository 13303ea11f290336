"""`InspectorCallback`: records a `transformers.Trainer` run with `inspector.watch`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from transformers import TrainerCallback

import inspector
from inspector_plugins.watch_options import WatchOptions

LOG_NAMES = {"learning_rate": "lr", "grad_norm": "grad_norm"}
"""Trainer log keys renamed to the Inspector's names (the rest keep theirs; eval ones get `eval/`)."""


class InspectorCallback(WatchOptions, TrainerCallback):
    """Attach the Inspector when training begins, record the Trainer's logs, close at the end.

    `run_dir` defaults to `<output_dir>/inspector`. Steps follow the optimizer (one record step per
    optimizer step, like `state.global_step`). Use `logging_steps=1` to give the anomaly probe a
    loss at every step (spike detection). Evaluation needs no marking: the Trainer evaluates with
    `model.eval()` under `torch.no_grad()`, which the timing probe records as the "eval" phase
    (`TrainerCallback` has no hook before an evaluation to mark it with `Watch.phase`).
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        """Start recording `model`, stepping with the (unwrapped) optimizer."""
        if self.watch is not None or model is None:
            return
        run_dir = Path(self.run_dir) if self.run_dir else Path(args.output_dir) / "inspector"
        torch_optimizer = getattr(optimizer, "optimizer", optimizer)      # accelerate wraps it
        self.watch = inspector.watch(model, run_dir, optimizer=torch_optimizer, probes=self.probes, every=self.every,
                                     config={"trainer_args": _plain(args.to_dict())}, **self.watch_options)

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        """Record the numbers the Trainer logs, at the optimizer step just done."""
        if self.watch is None or not logs:
            return
        values = {LOG_NAMES.get(k, k): float(v) for k, v in logs.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
        train = {k: v for k, v in values.items() if not k.startswith("eval_")}
        if train:
            self.watch.step(**train)
        for key, value in values.items():
            if key.startswith("eval_"):
                self.watch.log(f"eval/{key[5:]}", value, step=max(state.global_step - 1, 0))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Remove every hook and close the run."""
        self.close_watch()


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (str, bool, int)) or v is None:
            out[k] = v
        elif isinstance(v, float):
            out[k] = v if math.isfinite(v) else str(v)
        else:
            out[k] = str(v)
    return out
