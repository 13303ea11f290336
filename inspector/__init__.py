"""DeepSeek Inspector: probes for PyTorch training and inference, a run store, and two front ends.

Public entry points:
- `inspector.watch(model, run_dir, ...)`: attach to a model; returns a `Watch` with `.step()`/`.close()`.
- `inspector.log_scalar(name, value)`: record your own metric into the active run.
- `inspector.Recorder(run_dir)`: the low-level recording API (bounded queue + writer thread).
- `inspector.open_run(path)`: the reader over a live or finished run.
- `inspector.restore_rng(run, step)`, `inspector.batch_at(run, step)`, `inspector.fingerprint(*tensors)`:
  replaying a step an anomaly was reported at (generator states, the batch's fingerprint).

Attributes are imported lazily, so `import inspector.views` (the UIs) never imports torch.
"""
from __future__ import annotations

from inspector.lazy_exports import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "Recorder": ("inspector.store.recorder", "Recorder"),
    "open_run": ("inspector.store.reader", "open_run"),
    "RunReader": ("inspector.store.reader", "RunReader"),
    "RunError": ("inspector.store.errors", "RunError"),
    "watch": ("inspector.watch", "watch"),
    "Watch": ("inspector.watch", "Watch"),
    "log_scalar": ("inspector.watch", "log_scalar"),
    "fingerprint": ("inspector.probes.fingerprint", "fingerprint"),
    "restore_rng": ("inspector.replay", "restore_rng"),
    "batch_at": ("inspector.replay", "batch_at"),
}

__all__ = ["__version__", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
