"""Stage 1, environment: nvidia-smi, torch and its CUDA, the device, NVML, and the modules the kit needs."""
from __future__ import annotations

import importlib
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.gpu_check.common import Result, dry_run, judge, run_stage

NEEDED = ("torch", "numpy", "pandas", "pyarrow", "psutil", "pynvml", "pytest")
"""Modules the stages import (the core of the Inspector, the reader, the test runner)."""


def nvidia_smi() -> tuple[str, str]:
    """(status, first lines) of `nvidia-smi --query-gpu=...`; status "absent" without the binary."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "absent", ""
    query = "name,driver_version,memory.total,power.limit,clocks.max.sm,temperature.gpu"
    try:
        p = subprocess.run([exe, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "timed out", ""
    text = (p.stdout or p.stderr).strip()
    try:  # the full screen, for the log
        print(subprocess.run([exe], capture_output=True, text=True, timeout=20).stdout, flush=True)
    except subprocess.TimeoutExpired:
        pass
    return ("ok" if p.returncode == 0 else f"rc {p.returncode}"), text


def nvml_probe() -> str:
    """pynvml's view: driver version and device count, or why NVML is unavailable."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            drv = pynvml.nvmlSystemGetDriverVersion()
            drv = drv.decode() if isinstance(drv, bytes) else drv
            return f"driver {drv}, {pynvml.nvmlDeviceGetCount()} device(s)"
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"


def body(out: Path, res: Result) -> None:
    """Fill the figures; PASS when every module imports and (outside a dry run) torch sees a GPU."""
    fig = res.figures
    fig["python"] = f"{sys.executable} {platform.python_version()}"
    missing = []
    for name in NEEDED:
        try:
            mod = importlib.import_module(name)
            fig[f"module {name}"] = getattr(mod, "__version__", "ok")
        except Exception as exc:
            missing.append(name)
            fig[f"module {name}"] = f"missing: {type(exc).__name__}: {exc}"
    smi_status, smi = nvidia_smi()
    fig["nvidia-smi"] = smi if smi else smi_status
    fig["pynvml"] = nvml_probe()
    import torch

    fig["torch"] = torch.__version__
    fig["torch.version.cuda"] = torch.version.cuda
    fig["cuda available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        fig["device"] = f"{props.name}, {props.total_memory / 2**30:.1f} GiB, sm_{props.major}{props.minor}, " \
                        f"{props.multi_processor_count} SMs"
        fig["device count"] = torch.cuda.device_count()
        fig["bf16 supported"] = torch.cuda.is_bf16_supported()
    elif torch.version.cuda is None:
        res.notes.append("this torch is a CPU-only build: run the kit with a CUDA build of torch (PYTHON=...)")
    if missing:
        res.notes.append(f"missing modules: {', '.join(missing)}")
    res.budget = "modules import; torch sees CUDA"
    if dry_run():
        judge(res, not missing)
        return
    judge(res, not missing and torch.cuda.is_available())


if __name__ == "__main__":
    sys.exit(run_stage("env", body))
