"""The stack dump file: header lines in `STACK_HEADER_KEYS` order, then faulthandler's text, parsed
back by an independent parser (`tests.hangs.stacks`) and by the store's reader."""
from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

from inspector.store.heartbeat_format import STACK_HEADER_KEYS, CollectiveRef
from inspector.store.heartbeat_read import read_stack_dump
from inspector.watchdog.stack_dump import write_stack_dump
from tests.hangs.stacks import parse_dump


def _dump_from_a_thread(rank_dir: Path, values: dict) -> str:
    """Write the dump from another thread, as the watchdog does, while this (main) thread waits here."""
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(write_stack_dump(rank_dir, 3, values)))
    t.start()
    t.join()  # main thread waits here
    return out[0]


def test_header_and_frames(tmp_path: Path) -> None:
    ref = CollectiveRef(group="default", op="all_reduce", seq=9, shapes=[[2]], dtype="float32", entered=5.0)
    name = _dump_from_a_thread(tmp_path, {"rank": 2, "world_size": 4, "step": 17, "phase": "collective",
                                          "module": "layers.1", "stalled_s": 21.5, "collective": ref.to_json()})
    assert name == "stacks-0003.txt" and sorted(os.listdir(tmp_path)) == [name]
    text = (tmp_path / name).read_text()
    header = [line for line in text.splitlines() if line.startswith("# ")]
    assert [h[2:].split(":", 1)[0] for h in header] == list(STACK_HEADER_KEYS)
    dump = parse_dump(tmp_path / name)
    h = dump.header
    assert (h["rank"], h["world_size"], h["step"], h["phase"], h["module"]) == ("2", "4", "17", "collective", "layers.1")
    assert (int(h["pid"]), h["host"], float(h["stalled_s"])) == (os.getpid(), socket.gethostname(), 21.5)
    assert CollectiveRef.from_json(json.loads(h["collective"])) == ref
    assert int(h["main_thread"], 16) == threading.main_thread().ident
    # the main thread's innermost frame of this file is the join in _dump_from_a_thread
    lines = open(__file__).read().splitlines()
    join_line = next(i + 1 for i, s in enumerate(lines) if s.endswith("# main thread waits here"))
    ours = [(n, fn) for f, n, fn in dump.main if f == __file__]
    assert ours[0] == (join_line, "_dump_from_a_thread")
    assert len(dump.threads) >= 2   # the dumping thread too


def test_the_store_reader_reads_it(tmp_path: Path) -> None:
    name = _dump_from_a_thread(tmp_path, {"rank": 0, "world_size": 1, "step": 1, "phase": "data", "module": "",
                                          "stalled_s": 6.0, "collective": None})
    dump = read_stack_dump(tmp_path / name)
    main = dump.main_thread
    assert main is not None and dump.collective is None
    assert any(fr.file == __file__ and fr.function == "_dump_from_a_thread" for fr in main.frames)
