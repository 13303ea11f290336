"""System sampling: GPUs through NVML, the host through psutil, in a background thread.

`NvmlReader` (nvml.py) reads per-GPU utilisation, memory, power, temperature and SM clock;
`HostReader` (host.py) reads host CPU% and the process's RSS; `SystemSampler` (sampler.py) polls
both at a fixed interval on a daemon thread and submits `system` records. Nothing here imports
torch (a caller injects torch's memory counters through `SystemSampler(extra=...)`), and nothing
here raises into its caller: a missing GPU, NVML library or psutil gives None ("N/A") values.
"""
from inspector.sysmon.host import HostReader
from inspector.sysmon.nvml import GPU_METRICS, NvmlReader
from inspector.sysmon.sampler import SYSTEM_COLUMNS, SystemSampler

__all__ = ["GPU_METRICS", "HostReader", "NvmlReader", "SYSTEM_COLUMNS", "SystemSampler"]
