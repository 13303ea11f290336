"""What the Recorder writes, the RunReader returns: every kind, filters, ranks, blobs, tailing."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from inspector.schema import EXPERT_LOAD, FORMAT_VERSION, SYSTEM, all_kinds
from inspector.store import open_run
from inspector.store.recorder import Recorder


def _record_basic(run: Path, steps: int = 30, rank: int = 0, world_size: int = 1) -> None:
    with Recorder(run, name="rt", rank=rank, world_size=world_size) as rec:
        for s in range(steps):
            rec.step = s
            rec.scalars({"loss": 10.0 - s + rank, "lr": 1e-3})
            rec.histograms(["a", "b"], np.arange(8)[None, :] * np.array([[1], [2]]) + s, -1.0, 1.0,
                           underflow=[s, 0], overflow=[0, s])


def test_scalars_histograms_roundtrip_with_step_and_name_filters(tmp_path: Path) -> None:
    _record_basic(tmp_path / "run")
    r = open_run(tmp_path / "run")
    df = r.to_pandas("scalar", names=["loss"])
    assert list(df["step"]) == list(range(30))
    np.testing.assert_allclose(df["value"], [10.0 - s for s in range(30)])
    part = r.to_pandas("scalar", steps=(5, 7))
    assert sorted(set(part["step"])) == [5, 6, 7] and len(part) == 6
    h = r.to_pandas("histogram", steps=12, names=["b"])
    assert len(h) == 1
    assert list(h["counts"][0]) == [2 * i + 12 for i in range(8)]
    assert (h["overflow"][0], h["underflow"][0], h["lo"][0], h["hi"][0]) == (12, 0, -1.0, 1.0)
    assert r.status() == "finished" and r.last_step() == 29
    assert r.meta.name == "rt" and r.meta.format_version == FORMAT_VERSION


def test_every_builtin_kind_roundtrips(tmp_path: Path) -> None:
    run = tmp_path / "run"
    counts = np.array([5, 0, 3, 8])
    with Recorder(run) as rec:
        rec.step = 4
        rec.submit(EXPERT_LOAD, {"name": "layers.1.moe", "layer": 1, "counts": counts, "imbalance": 8 / 4,
                                 "cv": float(counts.std() / counts.mean()), "router_entropy": 1.2, "dropped": 0,
                                 "aux_loss": 0.01, "bias": np.zeros(4, np.float32)})
        rec.submit(SYSTEM, {"device": "host", "cpu_percent": 55.0, "rss": 1e9})  # GPU columns: N/A
        rec.submit("grad_stats", {"name": ["w1", "w2"], "norm": [1.0, 2.0], "mean": 0.0, "var": [0.1, 0.2],
                                  "max_abs": 3.0, "zero_frac": 0.0, "update_ratio": 1e-3,
                                  "var_over_steps": None}, rows=2)
        rec.submit("activation_stats", {"name": "mlp", "mean": 0.1, "std": 1.0, "min": -3.0, "max": 3.0,
                                        "dead_frac": 0.25, "saturated_frac": 0.0, "nonfinite": 0})
        rec.submit("timing", {"name": ["model", "model"], "phase": ["forward", "backward"], "ms": [3.5, 7.0]}, rows=2)
        rec.submit("attention_stats", {"name": "attn", "layer": 0, "head": [0, 1], "entropy": [0.5, 2.0],
                                       "max_weight": [0.9, 0.2], "collapsed": [True, False]}, rows=2)
        rec.anomaly("nonfinite_grad", "NaN in layers.3.mlp", module="layers.3.mlp", severity="error")
    r = open_run(run)
    el = r.to_pandas("expert_load")
    assert list(el["counts"][0]) == [5, 0, 3, 8] and el["layer"][0] == 1 and el["step"][0] == 4
    sysd = r.to_pandas("system")
    assert np.isnan(sysd["gpu_util"][0]) and sysd["rss"][0] == 1e9
    g = r.to_pandas("grad_stats")
    assert list(g["norm"]) == [1.0, 2.0] and g["var_over_steps"].isna().all()
    t = r.to_pandas("timing")
    assert dict(zip(t["phase"], t["ms"])) == {"forward": 3.5, "backward": 7.0}
    a = r.to_pandas("anomaly")
    assert a["module"][0] == "layers.3.mlp" and a["message"][0] == "NaN in layers.3.mlp"
    present = set(r.kinds())
    assert {"expert_load", "system", "grad_stats", "activation_stats", "timing", "attention_stats",
            "anomaly", "scalar"} <= present
    # empty kinds still give a typed, empty frame
    assert list(r.to_pandas("histogram").columns)[:3] == ["step", "wall_time", "name"]
    assert len({k.name for k in all_kinds()}) == len(all_kinds())


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
def test_attention_maps_fetch_by_step_and_layer(tmp_path: Path, codec: str) -> None:
    run = tmp_path / "run"
    rng = np.random.default_rng(1)
    maps = {(s, layer): rng.random((4, 6, 6)).astype(np.float16) for s in range(0, 50, 10) for layer in range(3)}
    with Recorder(run, blob_codec=codec) as rec:
        for (s, layer), m in maps.items():
            rec.attention_map(f"layers.{layer}.attn", m, layer=layer, step=s, heads=[0, 1, 2, 3],
                              tokens=list("abcdef"))
    r = open_run(run)
    assert r.blob_steps() == [0, 10, 20, 30, 40]
    for (s, layer), m in maps.items():
        got, row = r.fetch(step=s, layer=layer)
        np.testing.assert_array_equal(got, m)
        assert row["codec"] == codec and row["tokens"] == list("abcdef") and row["heads"] == [0, 1, 2, 3]
    with pytest.raises(KeyError):
        r.attention_map(step=11, layer=0)


def test_ranks_are_merged_with_a_rank_column(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _record_basic(run, steps=5, rank=0, world_size=2)
    _record_basic(run, steps=5, rank=1, world_size=2)
    r = open_run(run)
    assert r.ranks == [0, 1] and r.status() == "finished"
    df = r.to_pandas("scalar", names=["loss"])
    assert sorted(set(df["rank"])) == [0, 1]
    both = df.pivot(index="step", columns="rank", values="value")
    np.testing.assert_allclose(both[1] - both[0], 1.0)
    assert len(r.to_pandas("scalar", ranks=[1], names=["loss"])) == 5


def test_half_written_world_is_not_finished(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _record_basic(run, steps=3, rank=0, world_size=2)
    assert open_run(run).status() != "finished"  # rank 1 never wrote


def test_read_new_returns_each_row_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rec = Recorder(run)
    reader = None
    seen: list[int] = []
    for s in range(20):
        rec.scalar("x", float(s), step=s)
        if s % 4 == 3:
            assert rec.flush()
            if reader is None:
                reader = open_run(run)
                cur = reader.cursor("scalar")
            new = reader.read_new(cur, names=["x"])
            seen.extend(new.column("step").to_pylist())
    rec.close()
    seen.extend(reader.read_new(cur, names=["x"]).column("step").to_pylist())
    assert seen == list(range(20))


def test_deferred_values_are_resolved_on_the_writer_thread(tmp_path: Path) -> None:
    class Later:
        def __init__(self, v: float) -> None:
            self.v = v

        def resolve(self) -> float:
            return self.v * 2

    with Recorder(tmp_path / "run") as rec:
        rec.scalar("late", Later(21.0), step=0)
    assert open_run(tmp_path / "run").to_pandas("scalar", names=["late"])["value"].tolist() == [42.0]


def test_full_queue_drops_are_counted_and_recorded(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rec = Recorder(run, queue_size=4, coalesce_s=0.5)
    results = [rec.scalar("x", float(i), step=i) for i in range(200)]
    rec.close()
    dropped = results.count(False)
    assert dropped > 0 and rec.dropped == dropped
    r = open_run(run)
    stats = r.to_pandas("scalar", names=["inspector/dropped_records"])
    assert stats["value"].iloc[-1] == dropped
    assert json.loads((run / "rank-00000" / "closed.json").read_text())["dropped"] == dropped
    assert len(r.to_pandas("scalar", names=["x"])) == 200 - dropped


def test_bad_records_are_dropped_without_raising(tmp_path: Path) -> None:
    with Recorder(tmp_path / "run") as rec:
        rec.submit("scalar", {"name": "x", "value": 1.0, "no_such_column": 3})
        rec.scalar("ok", 2.0)
    r = open_run(tmp_path / "run")
    assert r.to_pandas("scalar", names=["ok"])["value"].tolist() == [2.0]
    assert rec.dropped == 1


def test_flush_interval_makes_records_visible_quickly(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with Recorder(run) as rec:
        rec.scalar("x", 1.0, step=0)
        reader = None
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if reader is None and (run / "run.json").exists():
                reader = open_run(run)
            if reader is not None and len(reader.read_new(reader.cursor("scalar"), names=["x"])):
                break
            time.sleep(0.01)
        else:
            pytest.fail("record not visible within 5 s without an explicit flush")
