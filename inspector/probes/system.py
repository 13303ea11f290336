"""The system probe: GPU (NVML), torch allocator and host (psutil) metrics at a fixed rate.

A thin wrapper around `inspector.sysmon.SystemSampler`: `attach` starts the sampler thread at
`ctx.sampling.system_interval_s` (default 1 s) and `detach` stops and joins it. Records: kind
`system`, one row per visible GPU ("gpu0", … = cuda:N) and one "host" row per sample; see
`inspector.sysmon.sampler`. When CUDA is initialised, GPU rows also carry torch's
`memory_allocated` / `memory_reserved` / `max_memory_allocated` of that device in bytes. Under
torchrun with several GPUs visible per rank, each rank samples only the GPU its model is on.
No GPU or no NVML: GPU columns are null ("N/A"), never an exception.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch

from inspector.probes.base import Probe, ProbeContext
from inspector.probes.registry import register_probe
from inspector.sysmon import NvmlReader, SystemSampler


@register_probe
class SystemProbe(Probe):
    """Samples GPU and host metrics on a background thread while attached."""

    name = "system"
    kinds = ("system",)

    def __init__(self) -> None:
        super().__init__()
        self.sampler: SystemSampler | None = None

    def attach(self, ctx: ProbeContext) -> str | None:
        """Start the sampler thread."""
        self.ctx = ctx
        devices = _own_devices(ctx)
        self.sampler = SystemSampler(ctx.recorder, ctx.sampling.system_interval_s,
                                     extra=partial(torch_memory, devices), nvml=NvmlReader(devices=devices))
        self.sampler.start()
        return None

    def detach(self) -> None:
        """Stop and join the sampler thread."""
        super().detach()
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None


def torch_memory(devices: list[int] | None = None) -> dict[str, dict[str, Any]]:
    """torch's allocator counters (bytes) per CUDA device (all, or `devices`), keyed "gpuN".

    {} when CUDA is unavailable or not initialised yet (never initialises it).
    """
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for i in (range(torch.cuda.device_count()) if devices is None else devices):
        out[f"gpu{i}"] = {"torch_allocated": float(torch.cuda.memory_allocated(i)),
                          "torch_reserved": float(torch.cuda.memory_reserved(i)),
                          "torch_peak": float(torch.cuda.max_memory_allocated(i))}
    return out


def _own_devices(ctx: ProbeContext) -> list[int] | None:
    """The model's CUDA device when several ranks share the visible GPUs, else None (all)."""
    if ctx.recorder.world_size <= 1:
        return None
    param = next(ctx.model.parameters(), None)
    if param is None or param.device.type != "cuda":
        return None
    return [param.device.index if param.device.index is not None else torch.cuda.current_device()]
