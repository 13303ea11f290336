"""Train an engine `Trainer` while a `Watch` records it, closing both however training ends."""
from __future__ import annotations

from typing import Any

import inspector
from inspector.demo import RecordingCallback


def train_watched(trainer: Any, watch: inspector.Watch, *, steps: int | None = None, callback: Any = None) -> None:
    """`trainer.run()` (or `steps` train steps) with `callback` (default: the demo's RecordingCallback)
    forwarding metrics to `watch`; `watch` and `trainer` are closed afterwards."""
    trainer.callbacks.append(callback if callback is not None else RecordingCallback(watch))
    try:
        if steps is None:
            trainer.run()
        else:
            for _ in range(steps):
                trainer.train_step()
    finally:
        watch.close()
        trainer.close()
