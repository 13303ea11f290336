"""Writing a stack dump file: `# key: value` header lines, then `faulthandler`'s traceback of every
thread (format in `inspector.store.heartbeat_format`).

`faulthandler` is used rather than `sys._current_frames` + `traceback` because it reads the frames
without running Python code in the stuck threads' objects, and its output is the format people
already know from crashes (readable without our code).
"""
from __future__ import annotations

import faulthandler
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from inspector.store.heartbeat_format import STACK_HEADER_KEYS, STACKS_PREFIX, STACKS_SUFFIX, stacks_file_name


def main_thread_id() -> str:
    """The main thread's id the way faulthandler prints it ("0x%016x")."""
    return f"0x{threading.main_thread().ident or 0:016x}"


def header_lines(values: dict[str, Any]) -> str:
    """The header: one `# key: value` line per `STACK_HEADER_KEYS` entry, in that order (missing: empty)."""
    out = []
    for key in STACK_HEADER_KEYS:
        value = values.get(key, "")
        if key == "collective":
            value = json.dumps(value, sort_keys=True)
        out.append(f"# {key}: {value}\n")
    return "".join(out)


def write_stack_dump(rank_dir: Path, n: int, values: dict[str, Any]) -> str:
    """Write dump number `n` (1-based) into `rank_dir` and return its file name.

    `values` gives the header (see `STACK_HEADER_KEYS`; `pid`, `host`, `time` and `main_thread` are
    filled in when missing). Written to a hidden temporary file and renamed, so a reader never sees half.
    """
    name = stacks_file_name(n)
    values = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
              "main_thread": main_thread_id(), **values}
    tmp = rank_dir / f".{name}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(header_lines(values))
        f.flush()
        faulthandler.dump_traceback(f, all_threads=True)
    os.replace(tmp, rank_dir / name)
    return name


def next_dump_number(rank_dir: Path) -> int:
    """1 + the highest dump number already in `rank_dir` (an earlier session's dumps are kept)."""
    highest = 0
    try:
        names = os.listdir(rank_dir)
    except OSError:
        return 1
    for name in names:
        if name.startswith(STACKS_PREFIX) and name.endswith(STACKS_SUFFIX):
            digits = name[len(STACKS_PREFIX):-len(STACKS_SUFFIX)]
            if digits.isdigit():
                highest = max(highest, int(digits))
    return highest + 1
