"""Which `torch.amp.GradScaler` scaled the loss, so gradient norms can be reported unscaled.

With fp16 mixed precision, `scaler.scale(loss).backward()` leaves every gradient multiplied by the
scaler's current scale (65536 by default) until `scaler.unscale_` (or `scaler.step`) divides it
back. The gradients probe measures the pre-clip norm when backward ends, before that: it divides by
the scale of the scaler that last scaled a loss (`active_scale`), as a device tensor, so no sync.
While any probe needs it, `GradScaler.scale` is wrapped at class level (reference-counted) to
remember that scaler; the wrapper calls the original and returns its value unchanged.
Other loss scalers (apex, DeepSpeed) are not seen: their norms stay scaled.
"""
from __future__ import annotations

import functools
import threading
import weakref
from typing import Any, Callable

import torch

_lock = threading.Lock()
_users = 0
_original: Callable[..., Any] | None = None
_last: weakref.ReferenceType | None = None


def _scaler_class() -> type | None:
    amp = getattr(torch, "amp", None)
    return getattr(amp, "GradScaler", None)


def install() -> None:
    """Start remembering the scaler of each `GradScaler.scale` call (call `uninstall` once per call)."""
    global _users, _original
    cls = _scaler_class()
    if cls is None:
        return
    with _lock:
        _users += 1
        if _users > 1:
            return
        _original = cls.scale

        @functools.wraps(_original)
        def scale(self: Any, outputs: Any) -> Any:
            global _last
            if getattr(self, "_enabled", False):
                _last = weakref.ref(self)
            return _original(self, outputs)

        cls.scale = scale


def uninstall() -> None:
    """Undo one `install`; the last one puts `GradScaler.scale` back."""
    global _users, _original, _last
    cls = _scaler_class()
    if cls is None:
        return
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0 and _original is not None:
            cls.scale = _original
            _original, _last = None, None


def active_scale() -> torch.Tensor | None:
    """The scale (a 1-element device tensor) of the enabled scaler that last scaled a loss, else None."""
    scaler = _last() if _last is not None else None
    if scaler is None or not getattr(scaler, "_enabled", False):
        return None
    scale = getattr(scaler, "_scale", None)
    return scale if isinstance(scale, torch.Tensor) else None
