"""Getting small device results to the host without making the training thread wait."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


class HostValue:
    """A tensor on its way to host memory.

    On CUDA the copy goes into pinned memory with `non_blocking=True` and a CUDA event marks its
    end; `ready()` asks the event without waiting, and `resolve()` (called on the Recorder's writer
    thread, or by a probe one step later) waits for it. On CPU the value is ready at once. Either
    way the training thread never synchronises with the device. The Recorder accepts a HostValue
    wherever it accepts an array (it calls `resolve()`).
    """

    __slots__ = ("_host", "_event")

    def __init__(self, value: torch.Tensor) -> None:
        value = value.detach()
        if value.device.type == "cuda":
            self._host = torch.empty(value.shape, dtype=value.dtype, device="cpu", pin_memory=True)
            self._host.copy_(value, non_blocking=True)
            self._event: Any = torch.cuda.Event()
            self._event.record()
        else:
            self._host = value
            self._event = None

    def ready(self) -> bool:
        """True when the copy has landed (never blocks)."""
        return self._event is None or self._event.query()

    def resolve(self) -> np.ndarray:
        """The value as a numpy array (waits for the copy if it is still in flight)."""
        if self._event is not None:
            self._event.synchronize()
        host = self._host
        if host.dtype in (torch.bfloat16, torch.float16):
            host = host.float()
        return host.numpy()


def to_host(value: torch.Tensor) -> HostValue:
    """Start copying `value` to the host; see `HostValue`."""
    return HostValue(value)


class HostSlice:
    """A deferred column: `value.resolve()[index]`, optionally cast; resolved on the writer thread."""

    __slots__ = ("value", "index", "dtype")

    def __init__(self, value: HostValue, index: Any, dtype: Any = None) -> None:
        self.value = value
        self.index = index
        self.dtype = dtype

    def resolve(self) -> Any:
        """The slice as a numpy value."""
        out = self.value.resolve()[self.index]
        return out.astype(self.dtype) if self.dtype is not None else out
