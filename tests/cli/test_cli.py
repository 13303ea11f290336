"""The real `inspector` command on real run directories."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from inspector.store.recorder import Recorder
from tests.conftest import inspector_cli


def _make_run(path: Path, steps: int, close: bool = True) -> Recorder:
    rec = Recorder(path, name=path.name)
    for s in range(steps):
        rec.step = s
        rec.scalars({"loss": float(steps - s), "lr": 0.01})
        rec.histogram("w", np.arange(4) + s, 0.0, 1.0)
    if close:
        rec.close()
    else:
        rec.flush()
    return rec


def test_help_lists_the_commands() -> None:
    res = inspector_cli("--help")
    assert res.returncode == 0
    for cmd in ("ls", "info", "export", "demo"):
        assert cmd in res.stdout


def test_ls_shows_runs_with_steps_ranks_status_and_size(tmp_path: Path) -> None:
    _make_run(tmp_path / "alpha", 12)
    live = _make_run(tmp_path / "group" / "beta", 5, close=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    res = inspector_cli("ls", str(tmp_path))
    live.close()
    assert res.returncode == 0, res.stderr
    rows = {line.split("│")[1].strip(): line for line in res.stdout.splitlines() if line.startswith("│")}
    assert set(rows) == {"alpha", "group/beta", "broken"}
    assert "finished" in rows["alpha"] and " 11 " in rows["alpha"] and "1/1" in rows["alpha"]
    assert "live" in rows["group/beta"] and " 4 " in rows["group/beta"]
    assert "unreadable" in rows["broken"]
    assert "KiB" in rows["alpha"]


def test_info_shows_kinds_and_ranks(tmp_path: Path) -> None:
    _make_run(tmp_path / "run", 7)
    res = inspector_cli("info", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    assert "status finished" in res.stdout
    assert "histogram" in res.stdout and "scalar" in res.stdout


def test_export_parquet_and_csv_match_the_recorded_values(tmp_path: Path) -> None:
    _make_run(tmp_path / "run", 20)
    res = inspector_cli("export", str(tmp_path / "run"), "--format", "parquet", "--out", str(tmp_path / "pq"),
                        "--steps", "5:9")
    assert res.returncode == 0, res.stderr
    df = pq.read_table(tmp_path / "pq" / "scalar.parquet").to_pandas()
    loss = df[df["name"] == "loss"]
    assert loss["step"].tolist() == [5, 6, 7, 8, 9]
    assert loss["value"].tolist() == [15.0, 14.0, 13.0, 12.0, 11.0]
    res = inspector_cli("export", str(tmp_path / "run"), "--format", "csv", "--out", str(tmp_path / "csv"),
                        "--kind", "histogram")
    assert res.returncode == 0, res.stderr
    h = pd.read_csv(tmp_path / "csv" / "histogram.csv")
    assert len(h) == 20 and h["counts"][3] == "[3, 4, 5, 6]"
    assert not (tmp_path / "csv" / "scalar.csv").exists()


def test_demo_summary_counts_trained_steps_not_the_step_counter(tmp_path: Path, capsys) -> None:
    from inspector.demo import _print_summary
    from inspector.store.recorder import Recorder

    with Recorder(tmp_path / "run") as rec:
        for s in range(60):
            rec.scalars({"loss": 3.0 - s / 100}, step=s)
        rec.scalars({"cpu_percent": 5.0}, step=60)      # sampled after the last step ended
    _print_summary(tmp_path / "run")
    out = capsys.readouterr().out
    assert ", 60 steps," in out and "info " in out
