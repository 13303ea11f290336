"""Host metrics through psutil, N/A-safe: CPU utilisation of the machine and this process's RSS.

`cpu_percent` is the **system-wide** CPU utilisation in percent of all cores (0–100), averaged
over the time since the previous reading (`psutil.cpu_percent(interval=None)`, primed when the
reader is made); a sample taken less than `min_interval_s` after the previous reading has too
short a window to mean anything and gives None. `rss` is the resident set size
of **this process** in bytes (child processes such as DataLoader workers are not included).
Without psutil, or when a read fails, the value is None.
"""
from __future__ import annotations

import os
import time
from types import ModuleType
from typing import Any

HOST_METRICS: tuple[str, ...] = ("cpu_percent", "rss")
"""The host columns `HostReader.sample()` fills."""


class HostReader:
    """Reads host CPU% and process RSS; see the module docstring."""

    def __init__(self, psutil: ModuleType | Any | None = None, min_interval_s: float = 0.2) -> None:
        self.reason: str | None = None
        self.min_interval_s = min_interval_s
        self._psutil: Any = None
        self._process: Any = None
        self._last_cpu = time.monotonic()
        try:
            self._psutil = _import_psutil() if psutil is None else psutil
            self._process = self._psutil.Process(os.getpid())
            self._psutil.cpu_percent(interval=None)  # primes the counter; the first reading is meaningless
        except Exception as exc:
            self.reason = f"psutil unavailable: {type(exc).__name__}: {exc}"

    @property
    def available(self) -> bool:
        """True when psutil could be loaded."""
        return self._process is not None

    def sample(self) -> dict[str, Any]:
        """{"device": "host", "cpu_percent": %, "rss": bytes}, None where N/A."""
        row: dict[str, Any] = {"device": "host", "cpu_percent": None, "rss": None}
        if self._process is None:
            return row
        now = time.monotonic()
        if now - self._last_cpu >= self.min_interval_s:
            self._last_cpu = now
            try:
                row["cpu_percent"] = float(self._psutil.cpu_percent(interval=None))
            except Exception:
                pass
        try:
            row["rss"] = float(self._process.memory_info().rss)
        except Exception:
            pass
        return row


def _import_psutil() -> ModuleType:
    import psutil

    return psutil
