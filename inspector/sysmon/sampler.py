"""`SystemSampler`: polls GPUs (NVML) and the host (psutil) on a daemon thread into `system` records.

Every `interval_s` (first sample at `start()`) it submits one chunk of `system` rows: one per
visible GPU (device "gpu0", "gpu1", … = torch's cuda:N) and one for the host (device "host").
GPU rows carry `GPU_METRICS`; the host row carries `cpu_percent` (system-wide) and `rss` (this
process); every other column is null. `extra`, if given, is called on the sampler thread and
returns `{device label: {column: value}}` merged into the rows (a label without an NVML row gets
a row of its own): this is how the system probe adds torch's allocator counters
(`torch_allocated`, `torch_reserved`, `torch_peak`) without this package importing torch.

The thread never raises: a failing sample, `extra` or `submit` is logged once and skipped.
`close()` stops the thread and joins it; it is safe to call twice.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Mapping, Protocol

from inspector.sysmon.host import HostReader
from inspector.sysmon.nvml import NvmlReader

log = logging.getLogger("inspector")

SYSTEM_COLUMNS: tuple[str, ...] = (
    "device", "gpu_util", "mem_used", "mem_total", "power_w", "temp_c", "sm_clock_mhz", "clock_events",
    "torch_allocated", "torch_reserved", "torch_peak", "cpu_percent", "rss")
"""The payload columns of the `system` record kind, in schema order."""

Extra = Callable[[], Mapping[str, Mapping[str, Any]]]


class Submitter(Protocol):
    """What the sampler needs of a Recorder."""

    def submit(self, kind: Any, columns: Mapping[str, Any], rows: int = 1, step: int | None = None) -> bool:
        """Queue `rows` records of `kind`."""
        ...


class SystemSampler:
    """Background sampler of GPU and host metrics; see the module docstring."""

    def __init__(self, recorder: Submitter, interval_s: float = 1.0, extra: Extra | None = None, *,
                 nvml: NvmlReader | None = None, host: HostReader | None = None) -> None:
        self.recorder = recorder
        self.interval_s = max(float(interval_s), 0.01)
        self.extra = extra
        self.nvml = NvmlReader() if nvml is None else nvml
        self.host = HostReader() if host is None else host
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()
        if not self.nvml.available and self.nvml.reason:
            log.info("inspector: GPU metrics N/A (%s)", self.nvml.reason)

    def start(self) -> "SystemSampler":
        """Start the thread (once); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="inspector-sysmon", daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread, wait for it, and release NVML."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.nvml.close()

    def sample_once(self) -> list[dict[str, Any]]:
        """One set of rows (GPUs, then extra-only devices, then the host); never raises."""
        rows: list[dict[str, Any]] = []
        try:
            rows.extend(self.nvml.sample())
        except Exception as exc:
            self._warn_once("nvml", f"inspector: GPU sampling failed, GPU metrics N/A: {exc!r}")
        extra = self._extra()
        by_device = {r["device"]: r for r in rows}
        for device, values in extra.items():
            row = by_device.get(device)
            if row is None:
                row = by_device[device] = {"device": device}
                rows.append(row)
            row.update({k: v for k, v in values.items() if k in SYSTEM_COLUMNS and k != "device"})
        try:
            rows.append(self.host.sample())
        except Exception as exc:
            self._warn_once("host", f"inspector: host sampling failed: {exc!r}")
        return rows

    def _extra(self) -> Mapping[str, Mapping[str, Any]]:
        if self.extra is None:
            return {}
        try:
            return dict(self.extra() or {})
        except Exception as exc:
            self._warn_once("extra", f"inspector: extra system metrics failed: {exc!r}")
            return {}

    def _record(self) -> None:
        rows = self.sample_once()
        if not rows:
            return
        columns = {c: [r.get(c) for r in rows] for c in SYSTEM_COLUMNS}
        self.recorder.submit("system", columns, len(rows))
        self.samples += 1

    def _run(self) -> None:
        while True:
            try:
                self._record()
            except Exception as exc:  # a broken sample must never kill the thread, nor training
                self._warn_once("record", f"inspector: system sample dropped: {exc!r}")
            if self._stop.wait(self.interval_s):
                return

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def __enter__(self) -> "SystemSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
