"""System sampling: real host metrics, N/A without NVML, a fake NVML for GPU values, clean stops."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch

import inspector
from inspector.store.recorder import Recorder
from inspector.sysmon import HostReader, NvmlReader, SystemSampler


class NVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


class FakeNvml:
    """A pynvml look-alike with two GPUs; power readings fail on the second."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h}aaa"

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=40 + h)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(used=(h + 1) * 2**30, total=80 * 2**30)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        if h == 1:
            raise NVMLError("Not Supported")
        return 250_000  # milliwatts

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return 60 + h

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:
        return 1980

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        return 0x4 | 0x40 if h == 0 else 0x0      # nvml.h: SwPowerCap | HwThermalSlowdown; none


def test_real_nvml_never_raises_and_host_metrics_are_real() -> None:
    reader = NvmlReader()
    rows = reader.sample()
    if not reader.available:
        assert rows == [] and "NVML" in reader.reason
    host = HostReader().sample()
    assert host["rss"] == pytest.approx(psutil.Process().memory_info().rss, rel=0.5)
    assert host["cpu_percent"] is None or 0.0 <= host["cpu_percent"] <= 100.0 * os.cpu_count()


def test_without_nvml_the_run_has_host_rows_and_null_gpu_columns(tmp_path: Path) -> None:
    with Recorder(tmp_path / "run") as rec:
        sampler = SystemSampler(rec, 0.05, nvml=NvmlReader(nvml=FakeNvml(fail_init=True))).start()
        time.sleep(0.3)
        sampler.close()
        assert not sampler.running
    df = inspector.open_run(tmp_path / "run").to_pandas("system")
    assert len(df) >= 3 and set(df["device"]) == {"host"}
    assert df["gpu_util"].isna().all() and df["power_w"].isna().all()
    assert (df["rss"] > 0).all()


def test_fake_nvml_values_and_a_failing_metric_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = FakeNvml()
    extra = lambda: {"gpu0": {"torch_allocated": 123.0}}  # noqa: E731 — what the probe injects
    with Recorder(tmp_path / "run") as rec:
        sampler = SystemSampler(rec, 10.0, extra=extra, nvml=NvmlReader(nvml=fake)).start()  # samples at once
        sampler.close()
    df = inspector.open_run(tmp_path / "run").to_pandas("system").set_index("device")
    assert df.loc["gpu0", "gpu_util"] == 40 and df.loc["gpu1", "gpu_util"] == 41
    assert df.loc["gpu0", "power_w"] == 250.0 and df.loc["gpu1", "power_w"] != df.loc["gpu1", "power_w"]  # NaN
    assert df.loc["gpu1", "mem_used"] == 2 * 2**30 and df.loc["gpu0", "mem_total"] == 80 * 2**30
    assert df.loc["gpu0", "temp_c"] == 60 and df.loc["gpu0", "sm_clock_mhz"] == 1980
    assert df.loc["gpu0", "clock_events"] == "sw_power_cap+hw_thermal" and df.loc["gpu1", "clock_events"] == "none"
    assert df.loc["gpu0", "torch_allocated"] == 123.0
    assert fake.shutdowns == 1


def test_cuda_visible_devices_narrows_and_orders_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    rows = NvmlReader(nvml=FakeNvml()).sample()
    assert [(r["device"], r["gpu_util"]) for r in rows] == [("gpu0", 41)]


def test_a_failing_extra_is_skipped_not_raised(tmp_path: Path) -> None:
    def broken() -> dict:
        raise RuntimeError("boom")
    with Recorder(tmp_path / "run") as rec:
        sampler = SystemSampler(rec, 0.05, extra=broken, nvml=NvmlReader(nvml=FakeNvml(fail_init=True))).start()
        time.sleep(0.2)
        assert sampler.running
        sampler.close()
    assert len(inspector.open_run(tmp_path / "run").to_pandas("system")) >= 1


def test_system_probe_thread_stops_on_close(tmp_path: Path) -> None:
    before = {t.ident for t in threading.enumerate()}
    w = inspector.watch(torch.nn.Linear(2, 2), tmp_path / "run", probes=["system"])
    assert "system" in w.probes
    w.close()
    time.sleep(0.05)
    leftover = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert leftover == []
    assert len(inspector.open_run(tmp_path / "run").to_pandas("system")) >= 1
