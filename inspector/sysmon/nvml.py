"""Per-GPU metrics through NVML (`pynvml`, from the nvidia-ml-py package), N/A-safe.

`NvmlReader` initialises NVML once. Any failure there (pynvml not installed, no driver, no
GPU: `ImportError`, `OSError`, `pynvml.NVMLError`, or anything else) leaves the reader
*unavailable* with the reason kept in `.reason`; `sample()` then returns an empty list. Each metric
of each device is read on its own: one that fails (a GPU without power readings, a lost device)
is None in that sample and the others are still read. Nothing here raises.

Devices are the GPUs this process can see: all of NVML's devices, narrowed and ordered by
`CUDA_VISIBLE_DEVICES` when it is set (indices or UUID prefixes), and labelled "gpu0", "gpu1", …
in that order, so "gpuN" is torch's `cuda:N`. `devices=` narrows further to some of those ordinals.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any, Callable, Sequence

GPU_METRICS: tuple[str, ...] = ("gpu_util", "mem_used", "mem_total", "power_w", "temp_c", "sm_clock_mhz",
                                "clock_events")
"""The per-GPU columns `NvmlReader.sample()` fills: %, bytes, bytes, watts, °C, MHz, and why the clocks
are held down now (`clock_event_names`)."""

CLOCK_EVENT_BITS: dict[int, str] = {
    0x1: "gpu_idle", 0x2: "app_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x10: "sync_boost",
    0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake", 0x100: "display_clocks"}
"""NVML's clocks-event (formerly "throttle") reason bits (`nvmlClocksEventReason*`, nvml.h), by name."""
CLOCK_EVENTS_NONE = "none"


def clock_event_names(mask: int) -> str:
    """"sw_power_cap+hw_thermal" for the reasons set in an NVML clocks-event mask; "none" when the
    clocks are not held down (unknown bits as "0x…")."""
    names = [name for bit, name in CLOCK_EVENT_BITS.items() if mask & bit]
    rest = mask & ~sum(CLOCK_EVENT_BITS)
    if rest:
        names.append(hex(rest))
    return "+".join(names) or CLOCK_EVENTS_NONE


class NvmlReader:
    """Reads the visible GPUs' metrics through NVML; see the module docstring."""

    def __init__(self, nvml: ModuleType | Any | None = None, devices: Sequence[int] | None = None) -> None:
        self.available = False
        self.reason: str | None = None
        self.labels: list[str] = []
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            self._nvml = _import_pynvml() if nvml is None else nvml
            self._nvml.nvmlInit()
        except Exception as exc:  # ImportError, OSError, NVMLError (no driver / no GPU), anything else
            self._nvml = None
            self.reason = f"NVML unavailable: {type(exc).__name__}: {exc}"
            return
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
            indices = _visible_indices(count, os.environ.get("CUDA_VISIBLE_DEVICES"), self._uuid_of)
            ordinals = list(range(len(indices))) if devices is None else [d for d in devices if 0 <= d < len(indices)]
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(indices[o]) for o in ordinals]
            self.labels = [f"gpu{o}" for o in ordinals]
        except Exception as exc:
            self.reason = f"NVML device listing failed: {type(exc).__name__}: {exc}"
            self._handles, self.labels = [], []
            self._shutdown()
            return
        self.available = True
        if not self._handles:
            self.reason = "NVML found no visible GPU"

    def sample(self) -> list[dict[str, Any]]:
        """One dict per visible GPU: "device" plus every `GPU_METRICS` key (None where N/A)."""
        if not self.available:
            return []
        return [self._sample_one(label, h) for label, h in zip(self.labels, self._handles)]

    def close(self) -> None:
        """Shut NVML down (once); the reader is unavailable afterwards."""
        if self.available:
            self.available = False
            self.reason = "closed"
            self._shutdown()

    def _sample_one(self, label: str, handle: Any) -> dict[str, Any]:
        nv = self._nvml
        row: dict[str, Any] = {"device": label}
        row["gpu_util"] = _read(lambda: nv.nvmlDeviceGetUtilizationRates(handle).gpu)
        mem = _attempt(lambda: nv.nvmlDeviceGetMemoryInfo(handle))
        row["mem_used"] = _read(lambda: mem.used)
        row["mem_total"] = _read(lambda: mem.total)
        power_mw = _read(lambda: nv.nvmlDeviceGetPowerUsage(handle))
        row["power_w"] = None if power_mw is None else power_mw / 1000.0
        row["temp_c"] = _read(lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        row["sm_clock_mhz"] = _read(lambda: nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM))
        events = (getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)      # nvidia-ml-py >= 12.535
                  or getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
        mask = None if events is None else _read(lambda: events(handle))
        row["clock_events"] = None if mask is None else clock_event_names(int(mask))
        return row

    def _uuid_of(self, index: int) -> str:
        uuid = self._nvml.nvmlDeviceGetUUID(self._nvml.nvmlDeviceGetHandleByIndex(index))
        return uuid.decode() if isinstance(uuid, bytes) else str(uuid)

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # shutting down a half-initialised NVML must not raise either
            pass


def _import_pynvml() -> ModuleType:
    import pynvml

    return pynvml


def _attempt(get: Callable[[], Any]) -> Any:
    """`get()`, or None when it raises (NVMLError: not supported, GPU lost, …)."""
    try:
        return get()
    except Exception:
        return None


def _read(get: Callable[[], Any]) -> float | None:
    """`get()` as a float, or None when it raises or gives nothing numeric."""
    try:
        value = get()
        return None if value is None else float(value)
    except Exception:
        return None


def _visible_indices(count: int, visible: str | None, uuid_of: Callable[[int], str]) -> list[int]:
    """NVML indices of the GPUs `CUDA_VISIBLE_DEVICES` exposes, in CUDA order (all when unset).

    Like CUDA, parsing stops at the first entry that names no device.
    """
    if visible is None:
        return list(range(count))
    out: list[int] = []
    uuids: list[str] | None = None
    for entry in (e.strip() for e in visible.split(",")):
        if entry.lstrip("-").isdigit():
            idx = int(entry)
            if not 0 <= idx < count:
                break
            out.append(idx)
            continue
        if not entry:
            break
        if uuids is None:
            uuids = [uuid_of(i) for i in range(count)]
        matches = [i for i, u in enumerate(uuids) if u.startswith(entry) or u.startswith(f"GPU-{entry}")]
        if len(matches) != 1:
            break
        out.append(matches[0])
    return out
