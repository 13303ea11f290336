"""Parquet/CSV export of whole runs, read back with pandas and numpy only (no inspector code).

Oracles: the reader's decoded rows and attention maps (every one, compared exactly), and for a run
trained here with the weight_norm plugin, the trained model's own weight norms computed with torch.
"""
from __future__ import annotations

import json
import pickle
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from inspector.schema import RunMeta
from inspector.schema import kinds as schema_kinds
from inspector.store.export import export_run
from inspector.store.reader import RunReader
from inspector.store.writer import RankWriter
from inspector_plugins.weight_norm.kind import WEIGHT_NORM
from tests.watched_training import train_watched

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ROOT / "sample_runs" / "faults"


def expected_kinds(reader: RunReader) -> set[str]:
    """The kinds of a run recorded with every probe: the built-in ones the reader names, and the
    weight_norm plugin's (listed among the run's probes in run.json; its frames may be unnamed here)."""
    assert "weight_norm" in reader.meta.probes["selected"]
    return {k for k in reader.kinds() if not k.startswith("unknown-")} | {"weight_norm"}


@contextmanager
def weight_norm_kind(installed: bool) -> Iterator[None]:
    """The weight_norm plugin's kind registered in this process (installed) or not, restored after."""
    with pytest.MonkeyPatch.context() as mp:
        if installed:
            mp.setitem(schema_kinds._REGISTRY, WEIGHT_NORM.name, WEIGHT_NORM)
            mp.setitem(schema_kinds._BY_ID, WEIGHT_NORM.id, WEIGHT_NORM)
        else:
            mp.delitem(schema_kinds._REGISTRY, WEIGHT_NORM.name, raising=False)
            mp.delitem(schema_kinds._BY_ID, WEIGHT_NORM.id, raising=False)
        yield


def _export(run: Path, out: Path, fmt: str, *, installed: bool):
    with weight_norm_kind(installed), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_run(RunReader(run), out, fmt)


def _read(out: Path, kind: str, fmt: str) -> pd.DataFrame:
    """One exported kind, with pandas only; CSV list cells are JSON text."""
    if fmt == "parquet":
        return pd.read_parquet(out / f"{kind}.parquet")
    df = pd.read_csv(out / f"{kind}.csv")
    for col in ("shape", "heads"):
        if col in df:
            df[col] = [json.loads(v) for v in df[col]]
    return df


@pytest.fixture(scope="module")
def faults_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], Path]:
    """sample_runs/faults exported as Parquet and CSV, with the weight_norm plugin installed or not."""
    base = tmp_path_factory.mktemp("faults-export")
    out = {}
    for fmt in ("parquet", "csv"):
        for installed in (True, False):
            out[(fmt, installed)] = base / f"{fmt}-{installed}"
            _export(FAULTS, out[(fmt, installed)], fmt, installed=installed)
    return out


@pytest.fixture(scope="module")
def faults_reader() -> RunReader:
    """The oracle: the reader's view of sample_runs/faults (weight_norm read by its name's id)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RunReader(FAULTS)


FORMATS = ["parquet", "csv"]
PLUGIN = [True, False]     # the weight_norm plugin installed where the run is exported, or not


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_kind_is_exported_by_name_with_the_readers_row_count(faults_exports, faults_reader, fmt) -> None:
    for installed in PLUGIN:
        out = faults_exports[(fmt, installed)]
        tables = {p.stem for p in out.glob(f"*.{fmt}")}
        assert tables == expected_kinds(faults_reader), installed
        for kind in sorted(tables):
            assert len(_read(out, kind, fmt)) == faults_reader.read_table(kind).num_rows, (kind, installed)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_attention_map_is_exported_with_its_values(faults_exports, faults_reader, fmt) -> None:
    for installed in PLUGIN:
        out = faults_exports[(fmt, installed)]
        index = _read(out, "attention_map", fmt)
        assert len(index) == faults_reader.read_table("attention_map").num_rows > 0
        assert index["file"].notna().all()
        assert not {"offset", "blob_file", "length", "codec", "crc32"} & set(index.columns)
        files = sorted(p.relative_to(out).as_posix() for p in (out / "attention_map").glob("*.npy"))
        assert sorted(index["file"]) == files
        for row in index.itertuples():
            got = np.load(out / row.file, allow_pickle=False)
            want = faults_reader.attention_map(step=row.step, layer=row.layer, rank=row.rank)
            assert got.dtype == np.float16 and list(got.shape) == list(row.shape) == list(want.shape)
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_plugin_kind_values_match_the_reader(faults_exports, faults_reader, fmt) -> None:
    want = faults_reader.to_pandas("weight_norm").sort_values(["step", "name"])
    for installed in PLUGIN:
        got = _read(faults_exports[(fmt, installed)], "weight_norm", fmt).sort_values(["step", "name"])
        assert got["name"].tolist() == want["name"].astype(str).tolist()
        np.testing.assert_array_equal(got["step"].to_numpy(), want["step"].to_numpy())
        np.testing.assert_allclose(got["norm"].to_numpy(), want["norm"].to_numpy(), rtol=1e-15)


def test_export_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("something unpickled while exporting")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    _export(FAULTS, tmp_path / "out", "parquet", installed=False)
    index = pd.read_parquet(tmp_path / "out" / "attention_map.parquet")
    maps = sorted((tmp_path / "out" / "attention_map").glob("*.npy"))
    assert len(maps) == len(index) > 0
    for row in index.itertuples():
        assert np.load(tmp_path / "out" / row.file, allow_pickle=False).shape == tuple(row.shape)


def write_nameless_run(run: Path) -> None:
    """A run whose one kind (id 4242, values 1.5, 2.5, 3.5) records no name: written by the real
    rank writer from a schema without the `inspector.kind` metadata every KindSpec carries."""
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps(RunMeta(name="nameless").to_dict()))
    schema = pa.schema([pa.field("step", pa.int64()), pa.field("wall_time", pa.float64()),
                        pa.field("value", pa.float64())])
    nameless = type("Spec", (), {"schema": schema, "id": 4242, "version": 1})()
    writer = RankWriter(run, 0)
    writer.write_table(nameless, pa.table({"step": [0, 1, 2], "wall_time": [0.0] * 3, "value": [1.5, 2.5, 3.5]}))
    writer.close({"last_step": 2})


def test_a_kind_with_no_recorded_name_is_exported_under_a_fallback_and_said(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_nameless_run(run)
    report = _export(run, tmp_path / "out", "parquet", installed=False)
    df = pd.read_parquet(tmp_path / "out" / "unnamed-kind-4242.parquet")
    assert df["value"].tolist() == [1.5, 2.5, 3.5]
    assert [k.kind.name for k in report.kinds] == ["unnamed-kind-4242"]
    assert any("4242" in n and "unnamed-kind-4242.parquet" in n for n in report.notes)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """11 steps of the engine's debug config with attention maps (every 5th step) and the
    weight_norm plugin probe; returns the run directory and the trained model."""
    import torch

    import inspector
    from inspector_engine.config import get_config
    from inspector_engine.training import TrainConfig, Trainer

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)         # module scope runs before the per-test one-thread fixture
    run = tmp_path_factory.mktemp("trained") / "run"
    trainer = Trainer(get_config("debug"), TrainConfig(steps=11, seed=0, batch_size=2, seq_len=16, eval_every=0,
                                                       progress=False))
    watch = inspector.watch(trainer.model, run, optimizer=trainer.optimizer, probes=["attention", "weight_norm"],
                            every={"attention": 5})
    try:
        train_watched(trainer, watch)
    finally:
        torch.set_num_threads(threads)
    return run, trainer.model


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_run_recorded_with_the_plugin_exports_its_norms_and_maps(trained_run, tmp_path: Path, fmt: str) -> None:
    run, model = trained_run
    report = _export(run, tmp_path / "out", fmt, installed=False)
    norms = _read(tmp_path / "out", "weight_norm", fmt)
    last = norms[norms["step"] == norms["step"].max()]
    assert norms["step"].max() == 10 and len(last) == len(model.layers)
    for row in last.itertuples():        # the norm after the last optimizer step, from the model itself
        block = model.get_submodule(row.name)
        want = np.sqrt(sum(float(p.detach().double().square().sum()) for p in block.parameters()))
        np.testing.assert_allclose(row.norm, want, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = RunReader(run)
    index = _read(tmp_path / "out", "attention_map", fmt)
    assert sorted(set(index["step"])) == [0, 5, 10] and len(index) == reader.read_table("attention_map").num_rows
    for row in index.itertuples():
        np.testing.assert_array_equal(np.load(tmp_path / "out" / row.file, allow_pickle=False),
                                      reader.attention_map(step=row.step, layer=row.layer, rank=row.rank))
    assert not report.notes


def test_a_damaged_map_keeps_its_row_without_a_file_and_is_said(tmp_path: Path) -> None:
    run = tmp_path / "faults"
    shutil.copytree(FAULTS, run)
    with open(run / "rank-00000" / "blob-000000.bin", "r+b") as f:     # the first map's bytes
        f.seek(100)
        f.write(b"\xff" * 16)
    report = _export(run, tmp_path / "out", "parquet", installed=False)
    index = pd.read_parquet(tmp_path / "out" / "attention_map.parquet")
    n = len(index)
    assert n > 1 and index["file"].isna().tolist() == [True] + [False] * (n - 1)
    assert len(list((tmp_path / "out" / "attention_map").glob("*.npy"))) == n - 1
    assert any(f"attention_map: 1 of {n}" in note for note in report.notes)


@pytest.mark.parametrize("fmt", FORMATS)
def test_generator_states_survive_the_export_byte_for_byte(faults_exports, faults_reader, fmt) -> None:
    """Binary `rng_state` cells: bytes in Parquet, base64 text in CSV (CSV holds no bytes)."""
    import base64

    got = _read(faults_exports[(fmt, False)], "rng_state", fmt)
    want = faults_reader.read_table("rng_state").to_pandas()
    assert len(got) == len(want) > 0
    cells = list(got["state"]) if fmt == "parquet" else [base64.b64decode(v) for v in got["state"]]
    assert cells == list(want["state"])
