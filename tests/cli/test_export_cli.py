"""`inspector export` and `inspector info` on real runs: every kind by name, attention values, what
was written, and one line when the run cannot be read. Results are read back with pandas/numpy."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inspector.store.reader import RunReader
from tests.conftest import inspector_cli
from tests.store.test_export import FAULTS, expected_kinds, write_nameless_run

HIDE_PLUGINS = "import inspector.plugins as p; p._entry_points = lambda: []\n"
"""Prefix for `python -c`: the process sees no installed plugin (as where weight_norm is not installed)."""


def _cli_without_plugins(*args: str) -> subprocess.CompletedProcess:
    code = HIDE_PLUGINS + f"import sys\nfrom inspector.cli import main\nsys.exit(main({list(args)!r}))\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "160"})


def _rows_printed(stdout: str) -> dict[str, int]:
    """kind -> rows from the export's table of what it wrote."""
    return {m.group(1): int(m.group(2).replace(",", ""))
            for m in re.finditer(r"^\s+(\S+)\s+([\d,]+)\s+\S+\.(?:parquet|csv)", stdout, re.M)}


@pytest.fixture(scope="module")
def reader() -> RunReader:
    """The oracle: the reader's view of sample_runs/faults."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RunReader(FAULTS)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_prints_rows_per_kind_and_writes_every_map(tmp_path: Path, reader: RunReader, fmt: str) -> None:
    res = inspector_cli("export", str(FAULTS), "--format", fmt, "--out", str(tmp_path))
    assert res.returncode == 0 and res.stderr == "", res.stderr
    rows = _rows_printed(res.stdout)
    assert set(rows) == expected_kinds(reader)
    for kind, n in rows.items():
        assert n == reader.read_table(kind).num_rows, kind
        table = pd.read_parquet(tmp_path / f"{kind}.parquet") if fmt == "parquet" else pd.read_csv(tmp_path / f"{kind}.{fmt}")
        assert len(table) == n, kind
    assert f"{rows['attention_map']} .npy in attention_map/" in res.stdout
    index = pd.read_parquet(tmp_path / "attention_map.parquet") if fmt == "parquet" else pd.read_csv(tmp_path / "attention_map.csv")
    for row in index.itertuples():
        np.testing.assert_array_equal(np.load(tmp_path / row.file, allow_pickle=False),
                                      reader.attention_map(step=row.step, layer=row.layer, rank=row.rank))


def test_info_names_the_plugin_kind_installed_or_not() -> None:
    for res in (inspector_cli("info", str(FAULTS)), _cli_without_plugins("info", str(FAULTS))):
        assert res.returncode == 0, res.stderr
        assert "weight_norm" in res.stdout and "unknown" not in res.stdout
    assert "plugin not installed" in res.stdout     # the second: named from the run itself


def test_export_without_the_plugin_still_writes_its_kind(tmp_path: Path, reader: RunReader) -> None:
    res = _cli_without_plugins("export", str(FAULTS), "--out", str(tmp_path), "--kind", "weight_norm")
    assert res.returncode == 0, res.stderr
    assert _rows_printed(res.stdout) == {"weight_norm": reader.read_table("weight_norm").num_rows}
    got = pd.read_parquet(tmp_path / "weight_norm.parquet").sort_values(["step", "name"])
    want = reader.to_pandas("weight_norm").sort_values(["step", "name"])
    np.testing.assert_array_equal(got["norm"].to_numpy(), want["norm"].to_numpy())


def test_a_nameless_kind_is_exported_and_said_on_stderr(tmp_path: Path) -> None:
    write_nameless_run(tmp_path / "run")
    res = inspector_cli("export", str(tmp_path / "run"), "--format", "csv", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert _rows_printed(res.stdout) == {"unnamed-kind-4242": 3}
    assert "unnamed-kind-4242.csv" in res.stderr and "no name" in res.stderr
    assert pd.read_csv(tmp_path / "out" / "unnamed-kind-4242.csv")["value"].tolist() == [1.5, 2.5, 3.5]
    info = inspector_cli("info", str(tmp_path / "run"))
    assert "unnamed-kind-4242" in info.stdout and "unknown" not in info.stdout


def test_a_missing_or_corrupt_run_is_one_line_and_nothing_written(tmp_path: Path) -> None:
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "run.json").write_text("{not json")
    for run in (tmp_path / "missing", tmp_path / "corrupt"):
        res = inspector_cli("export", str(run), "--out", str(tmp_path / "out"))
        assert res.returncode == 2 and res.stdout == "", res.stdout
        assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("inspector: error:"), res.stderr
    assert not (tmp_path / "out").exists()
    res = inspector_cli("export", str(FAULTS), "--out", str(tmp_path / "out"), "--kind", "no_such_kind")
    assert res.returncode == 0 and "no records of kind 'no_such_kind'" in res.stderr
