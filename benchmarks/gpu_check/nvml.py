"""Stage 4, the NVML sampler: `SystemSampler` at 2 Hz for ~10 s while a matmul loop keeps the GPU busy.

The sampler records into a real run (with the system probe's torch allocator counters); the rows
are read back through `inspector.open_run(...).to_pandas("system")`, and per device the stage
reports the sample rate achieved and min/median/max of every column (N/A where a column is null).
The `system` rows carry the clocks-event ("throttle") reasons (`clock_events`); this stage also reads
them on GPU 0 through pynvml at the same rate and reports how many samples saw each reason.
PASS on a GPU: 1-2.5 samples/s, every GPU column recorded, utilisation above 50 % at its peak.
In a dry run the loop runs on the CPU and, where NVML is unavailable, `fake_nvml` stands in for it
(one GPU with fixed readings), so the GPU rows take the same path; torch's allocator columns stay N/A.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from inspector.sysmon.nvml import clock_event_names

from benchmarks.gpu_check.common import Result, cuda_ready, dry_run, fmt, judge, no_cuda, quick, run_stage

INTERVAL_S = 0.5
NVML_COLUMNS = ("gpu_util", "mem_used", "mem_total", "power_w", "temp_c", "sm_clock_mhz")
GPU_COLUMNS = (*NVML_COLUMNS, "torch_allocated", "torch_reserved", "torch_peak")
HOST_COLUMNS = ("cpu_percent", "rss")


class ThrottleWatcher:
    """Reads GPU 0's clock throttle reasons every `INTERVAL_S` on a thread; N/A without NVML."""

    def __init__(self, nvml: Any = None) -> None:
        self.nvml = nvml
        self.seen: dict[str, int] = {}
        self.samples = 0
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-check-throttle", daemon=True)

    def _run(self) -> None:
        try:
            if self.nvml is None:
                import pynvml as nv
            else:
                nv = self.nvml
            nv.nvmlInit()
        except Exception as exc:
            self.reason = f"{type(exc).__name__}: {exc}"
            return
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(0)
            read = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or nv.nvmlDeviceGetCurrentClocksThrottleReasons
            while not self._stop.is_set():
                mask = int(read(handle))
                self.samples += 1
                for name in clock_event_names(mask).split("+"):
                    self.seen[name] = self.seen.get(name, 0) + 1
                self._stop.wait(INTERVAL_S)
        except Exception as exc:
            self.reason = f"{type(exc).__name__}: {exc}"
        finally:
            nv.nvmlShutdown()

    def __enter__(self) -> "ThrottleWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def busy_loop(seconds: float, on_gpu: bool) -> int:
    """Matrix products for `seconds` (bf16 8192² on the GPU, fp32 256² on the CPU); returns the count."""
    import torch

    n, dev, dtype = (8192, "cuda", torch.bfloat16) if on_gpu else (256, "cpu", torch.float32)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    done, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(10):
            a = (a @ b).clamp_(-1, 1)
        if on_gpu:
            torch.cuda.synchronize()
        done += 10
    return done


def column_stats(df: Any, column: str) -> str:
    """"min / median / max" of a column's non-null values, or N/A."""
    vals = df[column].dropna().to_numpy(np.float64) if column in df else np.array([])
    if not len(vals):
        return "N/A"
    scale, unit = (2**30, " GiB") if column in ("mem_used", "mem_total", "rss") or column.startswith("torch_") else (1, "")
    lo, med, hi = (np.min(vals) / scale, np.median(vals) / scale, np.max(vals) / scale)
    return f"{fmt(lo, '.4g')} / {fmt(med, '.4g')} / {fmt(hi, '.4g')}{unit}"


def body(out: Path, res: Result) -> None:
    """Sample while busy, read back, judge."""
    import inspector
    from inspector.probes.system import torch_memory
    from inspector.sysmon import NvmlReader, SystemSampler

    on_gpu = cuda_ready()
    if not on_gpu and not dry_run():
        no_cuda(res, "torch sees no CUDA device")
        return
    seconds = 3.0 if quick() or dry_run() else 10.0
    run_dir = out / "work" / "nvml-run"
    rec = inspector.Recorder(run_dir, name="gpu-check-nvml")
    nvml, fake = None, dry_run() and not NvmlReader().available
    if fake:  # no GPU here: a stand-in NVML, so the GPU rows' path runs too
        from benchmarks.gpu_check import fake_nvml as nvml
    sampler = SystemSampler(rec, INTERVAL_S, extra=torch_memory, nvml=NvmlReader(nvml=nvml))
    fig = res.figures
    fig["nvml"] = ("fake (dry run: benchmarks/gpu_check/fake_nvml.py)" if fake
                   else "available" if sampler.nvml.available else (sampler.nvml.reason or "N/A"))
    with ThrottleWatcher(nvml) as throttle:
        sampler.start()
        t0 = time.monotonic()
        fig["matmuls"] = busy_loop(seconds, on_gpu)
        busy_s = time.monotonic() - t0
        sampler.close()
    rec.close()
    df = inspector.open_run(run_dir).to_pandas("system")
    fig["busy seconds"] = round(busy_s, 1)
    ok = True
    for device, rows in df.groupby(df["device"].astype(str)):
        wall = rows["wall_time"].to_numpy(np.float64)
        rate = (len(wall) - 1) / (wall.max() - wall.min()) if len(wall) > 1 and wall.max() > wall.min() else float("nan")
        fig[f"{device} samples"] = f"{len(rows)} at {fmt(rate)} Hz"
        cols = HOST_COLUMNS if device == "host" else GPU_COLUMNS
        for c in cols:
            fig[f"{device} {c}"] = column_stats(rows, c)
        if device != "host":
            needed = NVML_COLUMNS if dry_run() else GPU_COLUMNS  # no torch allocator counters on a CPU
            ok &= 1.0 <= rate <= 2.5 and all(rows[c].notna().any() for c in needed)
            ok &= bool(rows["gpu_util"].max() > 50)
        else:
            ok &= len(rows) >= 2 and rows["rss"].notna().all()
    gpu_rows = [d for d in df["device"].astype(str).unique() if d != "host"]
    if not gpu_rows:  # every GPU column, N/A, so the table's shape is the same with and without a GPU
        fig["gpu0 samples"] = "N/A (no GPU rows)"
        fig.update({f"gpu0 {c}": "N/A" for c in GPU_COLUMNS})
    fig["throttle reasons (samples)"] = throttle.seen or f"N/A ({throttle.reason})"
    res.budget = "1-2.5 Hz; all GPU columns; util peak > 50%"
    if dry_run():
        res.notes.append("dry run: CPU loop" + ("; GPU rows from a fake NVML" if fake else ""))
        judge(res, ok)
        if not gpu_rows:
            res.status = "ok (host only; GPU N/A)"
        return
    if not gpu_rows:
        res.notes.append("no GPU rows recorded: NVML unavailable")
    judge(res, ok and bool(gpu_rows))


if __name__ == "__main__":
    import sys

    sys.exit(run_stage("nvml", body))
