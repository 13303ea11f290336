"""TensorBoard export, read back with TensorBoard's own event reader."""
from __future__ import annotations

import numpy as np
import pytest

from inspector.store.reader import open_run
from tests.conftest import inspector_cli
from tests.synthetic_run import BINS, SyntheticSpec, write_synthetic_run

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _load(logdir):
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_scalars_and_histograms_round_trip(tmp_path) -> None:
    written = write_synthetic_run(tmp_path / "run", SyntheticSpec(steps=30, ranks=2))
    result = inspector_cli("export", str(tmp_path / "run"), "--format", "tensorboard", "--out", str(tmp_path / "tb"))
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        acc = _load(tmp_path / "tb" / f"rank-{rank:05d}")
        loss = acc.Scalars("loss")
        assert [e.step for e in loss] == list(range(30))
        np.testing.assert_allclose([e.value for e in loss], written.loss[rank], rtol=1e-6)
        total = acc.Scalars("timing/total/step/ms")
        np.testing.assert_allclose([e.value for e in total], written.step_ms[rank], rtol=1e-6)
        assert "experts/layers.1.ffn.router/imbalance" in acc.Tags()["scalars"]
    reader = open_run(tmp_path / "run")
    hist = reader.to_pandas("histogram", ranks=[0], names=["activations/layers.1"])
    events = _load(tmp_path / "tb" / "rank-00000").Histograms("activations/layers.1")
    assert [e.step for e in events] == hist["step"].tolist()
    first = events[0].histogram_value
    np.testing.assert_array_equal(first.bucket, np.asarray(hist["counts"].iloc[0], dtype=float))
    np.testing.assert_allclose(first.bucket_limit, np.linspace(-4, 4, BINS + 1)[1:])
    assert first.num == sum(hist["counts"].iloc[0])


def test_under_and_overflow_become_buckets(tmp_path) -> None:
    from inspector.store.recorder import Recorder

    with Recorder(tmp_path / "run", rank=0, world_size=1) as rec:
        rec.histogram("h", [1, 2, 3, 4], lo=0.0, hi=4.0, step=0, underflow=5, overflow=6)
    inspector_cli("export", str(tmp_path / "run"), "--format", "tensorboard", "--out", str(tmp_path / "tb"))
    h = _load(tmp_path / "tb" / "rank-00000").Histograms("h")[0].histogram_value
    assert list(h.bucket) == [5, 1, 2, 3, 4, 6]
    assert list(h.bucket_limit)[:5] == [0.0, 1.0, 2.0, 3.0, 4.0] and h.num == 21
