"""Run files and checkpoints are never unpickled: a run copied from anywhere cannot run code."""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import pytest

from inspector.store import open_run
from inspector.views import LiveRun
from inspector.views.summary import run_summary

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted(p for p in (ROOT / "sample_runs").iterdir() if (p / "run.json").exists())


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("something unpickled while reading a run")


@pytest.mark.parametrize("run", SAMPLES, ids=lambda p: p.name)
def test_reading_a_run_never_unpickles(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, _refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = open_run(run)
        for kind in reader.kinds():
            reader.to_pandas(kind)
        for rank in reader.ranks:
            for step in reader.blob_steps(rank=rank)[:3]:
                for row in reader.blob_rows(step=step, rank=rank):
                    reader.fetch(step=step, rank=rank, layer=row["layer"])
        run_summary(LiveRun(run))


def test_no_code_path_can_unpickle() -> None:
    """Static guard: no pickle, no torch.load without weights_only=True, no allow_pickle."""
    bad = []
    for path in [*ROOT.joinpath("inspector").rglob("*.py"), *ROOT.joinpath("engine").rglob("*.py"),
                 *ROOT.joinpath("plugins").rglob("*.py")]:
        text = path.read_text()
        for m in re.finditer(r"import pickle|from pickle|allow_pickle\s*=\s*True|read_pickle|torch\.load\(([^)]*)\)", text):
            if m.group(0).startswith("torch.load(") and "weights_only=True" in (m.group(1) or ""):
                continue
            bad.append(f"{path.relative_to(ROOT)}: {m.group(0)[:60]}")
    assert not bad, bad
