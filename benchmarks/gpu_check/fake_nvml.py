"""A stand-in for `pynvml` with one GPU and fixed readings, for the kit's CPU dry run only.

With it the dry run takes the GPU path of the NVML stage (GPU rows through `NvmlReader` and the
`SystemSampler` into a run, read back and judged; throttle reasons decoded) on a machine with no
GPU. Its readings are constants, so a test can compare what comes back with them.
"""
from __future__ import annotations

from types import SimpleNamespace

UTIL_PCT = 97
MEM_USED = 21 * 2**30
MEM_TOTAL = 80 * 2**30
POWER_MW = 612_500
TEMP_C = 61
SM_CLOCK_MHZ = 1980

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
nvmlClocksEventReasonGpuIdle = 0x1
nvmlClocksEventReasonSwPowerCap = 0x4
nvmlClocksEventReasonHwSlowdown = 0x8
REASONS = nvmlClocksEventReasonSwPowerCap
"""What `nvmlDeviceGetCurrentClocksEventReasons` answers: the software power cap."""


def nvmlInit() -> None:
    """Nothing to initialise."""


def nvmlShutdown() -> None:
    """Nothing to shut down."""


def nvmlDeviceGetCount() -> int:
    """One GPU."""
    return 1


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    """The handle is the index."""
    return index


def nvmlDeviceGetUUID(handle: int) -> str:
    """A fixed UUID."""
    return f"GPU-00000000-0000-0000-0000-00000000000{handle}"


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    """`UTIL_PCT` busy."""
    return SimpleNamespace(gpu=UTIL_PCT, memory=40)


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:
    """`MEM_USED` of `MEM_TOTAL` bytes."""
    return SimpleNamespace(used=MEM_USED, total=MEM_TOTAL, free=MEM_TOTAL - MEM_USED)


def nvmlDeviceGetPowerUsage(handle: int) -> int:
    """Milliwatts, as NVML reports them."""
    return POWER_MW


def nvmlDeviceGetTemperature(handle: int, sensor: int) -> int:
    """Degrees Celsius."""
    return TEMP_C


def nvmlDeviceGetClockInfo(handle: int, clock: int) -> int:
    """MHz."""
    return SM_CLOCK_MHZ


def nvmlDeviceGetCurrentClocksEventReasons(handle: int) -> int:
    """The reasons mask."""
    return REASONS
