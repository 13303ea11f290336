"""Getting small device results to the host without making the training thread wait."""
from __future__ import annotations

from collections import deque
from typing import Any, Iterator

import numpy as np
import torch


class HostValue:
    """A tensor on its way to host memory.

    On CUDA the copy goes into pinned memory with `non_blocking=True` and a CUDA event marks its
    end; `ready()` asks the event without waiting, and `resolve()` (called on the Recorder's writer
    thread, or by a probe one step later) waits for it. On CPU the value is ready at once. Either
    way the training thread never synchronises with the device, and the value is the one the
    tensor held at the call, whatever the loop does to it later. The Recorder accepts a HostValue
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
            # A copy, not a reference: the loop may change the tensor in place right after the call
            # (Hugging Face Trainer's `tr_loss -= tr_loss`), and the record must hold the value as of
            # the call. On CUDA the copy above is stream-ordered before any later in-place op.
            self._host = value.clone()
            self._event = None

    def ready(self) -> bool:
        """True when the copy has landed (never blocks)."""
        return self._event is None or self._event.query()

    def resolve(self) -> np.ndarray:
        """The value as a numpy array (waits for the copy if it is still in flight).

        float16 stays float16; bfloat16, which numpy lacks, becomes float32 (exactly: its bits
        are the top half of a float32's). Both are done in numpy: a torch op here would run on the
        writer thread and start a second intra-op thread pool next to the training thread's
        (`attention.batched.LazySummary` runs torch there only when torch uses one intra-op thread).
        """
        if self._event is not None:
            self._event.synchronize()
        host = self._host
        if host.dtype == torch.bfloat16:
            bits = host.view(torch.int16).numpy().astype(np.int32) << 16
            return bits.view(np.float32)
        return host.numpy()


def to_host(value: torch.Tensor) -> HostValue:
    """Start copying `value` to the host; see `HostValue`."""
    return HostValue(value)


class HostSlice:
    """A deferred column: `value.resolve()[index]`, optionally cast; resolved on the writer thread.
    `value`: a `HostValue`, or anything with `resolve()` and `ready()`."""

    __slots__ = ("value", "index", "dtype")

    def __init__(self, value: HostValue | Any, index: Any, dtype: Any = None) -> None:
        self.value = value
        self.index = index
        self.dtype = dtype

    def ready(self) -> bool:
        """True when the copy it slices has landed (never blocks)."""
        return self.value.ready()

    def resolve(self) -> Any:
        """The slice as a numpy value."""
        out = self.value.resolve()[self.index]
        return out.astype(self.dtype) if self.dtype is not None else out


class PendingCopies:
    """Host copies waiting to land, oldest first, each with what a probe needs to judge it later.

    `drain()` yields `(payload, array)` for every leading copy that has landed, never waiting,
    except that it waits for the oldest while more than `max_pending` wait (a copy that never lands
    must not pile up) or when asked to (`wait=True`, at close). An entry pushed with `value=None`
    is ready at once and yields `array=None`.
    """

    def __init__(self, max_pending: int = 8) -> None:
        self.max_pending = max_pending
        self._items: deque[tuple[Any, HostValue | None]] = deque()

    def push(self, payload: Any, value: HostValue | None) -> None:
        """Queue `value` (or nothing) with its payload."""
        self._items.append((payload, value))

    def drain(self, wait: bool = False) -> Iterator[tuple[Any, np.ndarray | None]]:
        """Landed copies in push order, as `(payload, array)`."""
        while self._items:
            payload, value = self._items[0]
            if value is not None and not (wait or value.ready() or len(self._items) > self.max_pending):
                return
            self._items.popleft()
            yield payload, None if value is None else value.resolve()

    def clear(self) -> None:
        """Forget everything queued."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
