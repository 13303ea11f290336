"""Train an engine `Trainer` while a `Watch` records it, closing both however training ends."""
from __future__ import annotations

from pathlib import Path
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


def record_short_demo(out: Path, seq_len: int) -> Path:
    """The demo's recording path on the engine's debug config, 2 steps of `seq_len` tokens (maps at
    step 0), into `out`."""
    import torch

    from inspector.demo import train_and_record
    torch.set_num_threads(1)
    train_and_record(config="debug", steps=2, out=out, seq_len=seq_len, batch_size=2, progress=False)
    return out
