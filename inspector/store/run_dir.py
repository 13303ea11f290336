"""Reading and writing the small JSON files of a run directory (run.json, rank.json, closed.json)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from inspector.schema import FORMAT_VERSION, RunMeta
from inspector.store.errors import CorruptRunError, RunNotFoundError, UnsupportedFormatError
from inspector.store.format import RANK_PREFIX, RUN_META_FILE


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` through a temporary file and a rename, so readers never see half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file, raising CorruptRunError with a one-line reason."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRunError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise CorruptRunError(f"{path}: expected a JSON object")
    return data


def load_run_meta(run_dir: Path) -> RunMeta:
    """Load and validate run.json of `run_dir`."""
    if not run_dir.exists():
        raise RunNotFoundError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise RunNotFoundError(f"{run_dir}: not a directory")
    path = run_dir / RUN_META_FILE
    if not path.exists():
        if any(rank_dirs(run_dir)):
            raise CorruptRunError(f"{run_dir}: run.json is missing (rank data is present)")
        raise RunNotFoundError(f"{run_dir}: not a run (no run.json)")
    data = read_json(path)
    version = data.get("format_version")
    if not isinstance(version, int):
        raise CorruptRunError(f"{path}: no integer format_version")
    if version > FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"{run_dir}: written in run format {version}, this inspector reads up to {FORMAT_VERSION}; "
            "upgrade deepseek-inspector")
    try:
        return RunMeta.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise CorruptRunError(f"{path}: {exc}") from None


def rank_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """(rank, path) of every rank directory, sorted by rank."""
    out = []
    try:
        entries = list(os.scandir(run_dir))
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith(RANK_PREFIX) and entry.is_dir():
            try:
                out.append((int(entry.name[len(RANK_PREFIX):]), Path(entry.path)))
            except ValueError:
                continue
    return sorted(out)


def is_run_dir(path: Path) -> bool:
    """True when `path` looks like a run directory (has run.json or rank directories)."""
    return (path / RUN_META_FILE).is_file() or bool(rank_dirs(path))
