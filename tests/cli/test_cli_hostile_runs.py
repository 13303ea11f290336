"""The CLI against hostile or careless run metadata: one line per bad run, nothing else breaks."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import inspector_cli
from tests.store.damaged_runs import record_run


def _good_meta(**override: object) -> dict:
    meta = {"name": "good", "format_version": 1, "world_size": 1, "created": time.time()}
    return {**meta, **override}


def _run_with_meta(root: Path, name: str, meta: object) -> Path:
    run = root / name
    record_run(run, steps=2, maps=False)
    (run / "run.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return run


BAD_METAS = {
    "string_world_size": _good_meta(world_size="1"),
    "negative_world_size": _good_meta(world_size=-3),
    "list_model": _good_meta(model=[1, 2]),
    "deep": '{"name": "d", "format_version": 1, "model": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "nan_created": '{"name": "n", "format_version": 1, "created": NaN}',
    "bool_version": _good_meta(format_version=True),
}


@pytest.mark.parametrize("case", sorted(BAD_METAS))
def test_bad_run_json_is_one_line_and_ls_still_lists_the_rest(tmp_path: Path, case: str) -> None:
    root = tmp_path / "root"
    _run_with_meta(root, "a-good", _good_meta())
    bad = _run_with_meta(root, "b-bad", BAD_METAS[case])
    info = inspector_cli("info", str(bad))
    assert info.returncode == 2 and "Traceback" not in info.stderr, info.stderr
    assert len(info.stderr.strip().splitlines()) == 1 and "run.json" in info.stderr
    ls = inspector_cli("ls", str(root))
    assert ls.returncode == 0, ls.stderr
    assert "a-good" in ls.stdout and "b-bad" in ls.stdout and "unreadable" in ls.stdout


def test_markup_and_escape_sequences_in_names_are_shown_not_executed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run = _run_with_meta(root, "r", _good_meta(name="x[/] \x1b[31mred\x1b]0;title\x07 [bold]b", host="h[/]\x1b[2J",
                                               model={"class": "M[/]", "parameters": "many"}))
    for cmd in (("info", str(run)), ("ls", str(root)), ("summary", str(run))):
        res = inspector_cli(*cmd)
        assert res.returncode == 0, (cmd, res.stderr)
        assert "\x1b" not in res.stdout + res.stderr, cmd
    info = inspector_cli("info", str(run))
    assert "x[/]" in info.stdout and "?[31mred" in info.stdout and "M[/]" in info.stdout and "many" in info.stdout


def test_huge_name_is_cut_and_fast(tmp_path: Path) -> None:
    run = _run_with_meta(tmp_path, "r", _good_meta(name="n" * 200_000))
    res = inspector_cli("info", str(run), timeout=60)     # took 578 s before names were bounded
    assert res.returncode == 0 and "n" * 150 in res.stdout and "n" * 300 not in res.stdout


def test_export_to_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    record_run(run, steps=3, maps=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker / "sub", Path("/proc/inspector-export")):
        res = inspector_cli("export", str(run), "--out", str(out))
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "inspector: error:" in res.stderr


def test_ls_reports_new_statuses(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run = root / "dmg"
    record_run(run, steps=40)
    seg = sorted((run / "rank-00000").glob("seg-*.dsi"))[1]
    os.truncate(seg, seg.stat().st_size // 2)
    res = inspector_cli("ls", str(root))
    assert res.returncode == 0 and "damaged" in res.stdout, res.stdout
    info = inspector_cli("info", str(run))
    assert "damaged" in info.stdout and "warning:" in info.stdout
