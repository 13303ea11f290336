"""Reading and writing the small JSON files of a run directory (run.json, rank.json, closed.json)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from inspector.schema import FORMAT_VERSION, RunMeta
from inspector.store.errors import CorruptRunError, RunNotFoundError, UnsupportedFormatError, one_line
from inspector.store.format import RANK_PREFIX, RUN_META_FILE
from inspector.store.safe_io import is_real_dir, read_regular

MAX_JSON_BYTES = 16 << 20
"""run.json, rank.json and closed.json are small; anything larger is not ours."""
_RANK_NAME = re.compile(re.escape(RANK_PREFIX) + r"(\d{5,7})")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` through a temporary file and a rename, so readers never see half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file, raising CorruptRunError with a one-line reason."""
    try:
        data = json.loads(read_regular(path, MAX_JSON_BYTES).decode("utf-8"))
    except (OSError, ValueError) as exc:     # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptRunError(f"{path}: unreadable ({type(exc).__name__}: {one_line(exc)})") from None
    except RecursionError:
        raise CorruptRunError(f"{path}: unreadable (nested too deeply)") from None
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
    if not os.path.lexists(path):
        if any(rank_dirs(run_dir)):
            raise CorruptRunError(f"{run_dir}: run.json is missing (rank data is present)")
        raise RunNotFoundError(f"{run_dir}: not a run (no run.json)")
    data = read_json(path)
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
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
    return scan_rank_dirs(run_dir)[0]


def scan_rank_dirs(run_dir: Path) -> tuple[list[tuple[int, Path]], list[str]]:
    """Rank directories of a run, sorted, and a one-line note for each entry named like one that
    is not used: not a real directory (a file, a symlink, a loop) or a malformed name."""
    out, strays = [], []
    try:
        entries = list(os.scandir(run_dir))
    except OSError:
        return [], []
    for entry in entries:
        if not entry.name.startswith(RANK_PREFIX):
            continue
        match = _RANK_NAME.fullmatch(entry.name)
        if match is None:
            strays.append(f"ignored {entry.name!r}: not a rank directory name")
        elif not is_real_dir(entry.path):
            what = "a symlink" if entry.is_symlink() else "not a directory"
            strays.append(f"ignored {entry.name}: {what}")
        else:
            out.append((int(match.group(1)), Path(entry.path)))
    return sorted(out), sorted(strays)


def is_run_dir(path: Path) -> bool:
    """True when `path` looks like a run directory (has run.json or rank directories)."""
    return os.path.lexists(path / RUN_META_FILE) or bool(rank_dirs(path))
