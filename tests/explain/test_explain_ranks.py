"""`explain` on a data-parallel job (a real 2-process DDP run, gloo): a corrupted batch on rank 1
spikes rank 1's loss only (each rank's loss is its own batch's), so `explain` judges rank 1 by
default (with that rank's batch, the one to look at), and says on which of the job's ranks the spike
was recorded."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from inspector.views.explain import explain, spike_ranks
from inspector.views.live import LiveRun
from tests import ddp_spike_worker as dw
from tests.conftest import inspector_cli

pytestmark = pytest.mark.multiproc
WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch.multiprocessing as mp

    run = tmp_path_factory.mktemp("ddp-spike") / "run"
    mp.spawn(dw.worker, args=(WORLD, str(run), f"tcp://127.0.0.1:{_free_port()}"), nprocs=WORLD, join=True)
    return run


def test_the_rank_whose_batch_spiked_is_judged(ddp_run: Path) -> None:
    run = LiveRun(ddp_run)
    assert spike_ranks(run, dw.SPIKE) == [dw.BAD]            # rank 0's loss at that step was its own, normal
    e = explain(run, dw.SPIKE)
    assert (e.rank, e.spike_ranks, e.ranks) == (dw.BAD, [dw.BAD], WORLD)
    assert e.spike.startswith("loss_spike")
    first = e.first
    assert first is not None and first.left_at == dw.SPIKE, e.leads[:3]   # the averaged gradient, on every rank
    other = explain(run, dw.SPIKE, rank=1 - dw.BAD)
    assert other.spike_ranks == [dw.BAD] and not other.spike.startswith("loss_spike")   # its gradient, not its loss
    # the batch shown is the one that spiked: rank 1's own, not rank 0's
    assert e.batch and other.batch and e.batch != other.batch
    batches = run.frame("batch")
    at = batches[(batches["step"] == dw.SPIKE) & (batches["rank"] == dw.BAD)]
    assert e.batch == [int(v) for v in at.sort_values("micro")["fingerprint"]]

def test_the_report_says_where_the_spike_was(ddp_run: Path) -> None:
    out = inspector_cli("explain", str(ddp_run), "--step", str(dw.SPIKE), "--width", "200")
    assert out.returncode == 0, out.stderr
    assert f"explain step {dw.SPIKE} (rank {dw.BAD}; the spike on rank {dw.BAD} only, of {WORLD})" in out.stdout
