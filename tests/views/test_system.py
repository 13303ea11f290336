"""System views: per rank and device series, N/A without GPU samples."""
from __future__ import annotations

import numpy as np
import pytest

from inspector.store.recorder import Recorder
from inspector.views import open_live
from inspector.views.system import GIB, has_gpu_samples, system_series
from tests.synthetic_run import SyntheticSpec, write_synthetic_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("sys")
    write_synthetic_run(path, SyntheticSpec(steps=30, ranks=2, slow_rank=1))
    live = open_live(path)
    yield live
    live.close()


def test_gpu_series_per_rank(run):
    util = system_series(run, "gpu_util")
    assert set(util) == {"r0 cuda:0", "r1 cuda:0"}
    np.testing.assert_allclose(util["r0 cuda:0"]["value"], 90.0)
    np.testing.assert_allclose(util["r1 cuda:0"]["value"], 70.0)      # the slow rank's GPU idles
    assert list(util["r0 cuda:0"]["step"]) == list(range(0, 30, 5))
    mem = system_series(run, "mem_used")
    np.testing.assert_allclose(mem["r0 cuda:0"]["value"], 4e9 / GIB)
    assert has_gpu_samples(run)


def test_host_series(run):
    cpu = system_series(run, "cpu_percent")
    assert set(cpu) == {"r0 host", "r1 host"}
    np.testing.assert_allclose(cpu["r1 host"]["value"], 51.0)
    assert (cpu["r0 host"]["t"].diff().dropna() >= 0).all()


def test_no_nvml_means_no_gpu_series(tmp_path):
    with Recorder(tmp_path, name="cpu-only") as rec:
        rec.submit("system", {"device": "host", "cpu_percent": 10.0, "rss": 1e8}, 1, step=0)
        rec.submit("system", {"device": "cuda:0"}, 1, step=0)             # NVML N/A: all nulls
    live = open_live(tmp_path)
    assert not has_gpu_samples(live) and system_series(live, "gpu_util") == {}
    assert list(system_series(live, "cpu_percent")) == ["r0 host"]
    live.close()
