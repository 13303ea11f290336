"""A collective that raises (in a real job: a peer died, a timeout) is kept incomplete with its error,
the heartbeat is written at once (the launcher may kill the process a moment later), and the error
still reaches the caller unchanged. One gloo process; the error is a real one from torch.distributed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from inspector.store.heartbeat_format import HEARTBEAT_FILE, Heartbeat
from inspector.watchdog.collectives import CollectiveTracker
from inspector.watchdog.progress import Progress
from inspector.watchdog.watchdog import Watchdog


@pytest.fixture()
def world_of_one(tmp_path: Path):
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'rdzv'}")
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_failed_collective_is_kept_with_its_error_and_written_at_once(tmp_path: Path, world_of_one) -> None:
    progress = Progress()
    tracker = CollectiveTracker(progress)
    dog = Watchdog(tmp_path, progress, tracker, rank=0, world_size=1, heartbeat_s=3600.0, hang_after_s=60.0)
    tracker.on_error = dog.write_now
    tracker.install()
    try:
        dist.all_reduce(torch.ones(2))                       # completes
        with pytest.raises(Exception) as raised:
            dist.all_reduce(torch.ones(2), op="not an op")   # raises inside torch.distributed
    finally:
        tracker.uninstall()
    assert progress.phase != "collective"                   # the phase was restored
    hb = Heartbeat.from_json(json.loads((tmp_path / HEARTBEAT_FILE).read_text()))   # written by write_now
    ok, bad = hb.recent
    assert (ok.seq, ok.completed is not None, ok.error) == (1, True, "")
    assert (bad.op, bad.seq, bad.completed) == ("all_reduce", 2, None)
    assert bad.error.startswith(type(raised.value).__name__ + ":") and str(raised.value).split()[0] in bad.error
    assert hb.collective is not None and hb.collective.seq == 2 and hb.collective.error == bad.error
    assert tracker.failed is None                            # the tracker stays on: the user's error, not ours
