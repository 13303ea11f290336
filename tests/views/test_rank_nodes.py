"""Rank tables by node and straggler score, on an 8-rank run written through the real Recorder with
two hosts: the node holding the slowed rank comes first, the slowed rank first within it, and the
score is how many ms a step it holds the job up (its lead over the slowest other rank on the measure
that flagged it, plain numpy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspector.store import writer as writer_module
from inspector.store.recorder import Recorder
from inspector.views import ranks
from inspector.views.live import open_live
from tests.views.timing_rows import submit_step

STEPS, RANKS, SLOW, EXTRA_MS = 24, 8, 6, 60.0


def host_of(rank: int) -> str:
    return "node-a" if rank < 4 else "node-b"


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray]:
    """The run, and each rank's own work per step (total less communication wait) as written."""
    rng = np.random.default_rng(0)
    recs = []
    for r in range(RANKS):
        monkeypatch.setattr(writer_module.socket, "gethostname", lambda r=r: host_of(r))
        recs.append(Recorder(tmp_path / "run", rank=r, world_size=RANKS, name="nodes", flush_interval=0.2))
    own = np.zeros((STEPS, RANKS))
    try:
        for s in range(STEPS):
            for r, rec in enumerate(recs):
                data = 5.0 + (EXTRA_MS if r == SLOW else 0.0)
                fwd, bwd, opt = 20.0 + rng.uniform(0.0, 2.0), 50.0 + rng.uniform(0.0, 2.0), 5.0
                comm = 0.0 if r == SLOW else EXTRA_MS          # everyone else waits for the slowed rank
                total = fwd + bwd + opt + data + comm + 0.5
                own[s, r] = total - comm
                submit_step(rec, s, fwd=fwd, bwd=bwd, opt=opt, data=data, other=comm + 0.5, comm=comm)
    finally:
        for rec in recs:
            rec.close()
    return tmp_path / "run", own


def test_rows_are_grouped_by_node_worst_first_and_scored(run_dir) -> None:
    path, own = run_dir
    table = ranks.rank_table(open_live(path))
    assert table["node"].tolist() == [host_of(r) for r in range(RANKS)]
    window = own[-20:]
    for r in range(RANKS):
        lead = np.median(np.maximum(window[:, r] - np.delete(window, r, axis=1).max(axis=1), 0.0))
        score = table.loc[table["rank"] == r, "straggler_score"].item()
        if r == SLOW:   # flagged by its data section, which leads the others' by exactly 60 ms: the
            # score is that measure's lead, the figure its reason quotes (own work leads by about as much)
            assert score == pytest.approx(EXTRA_MS) and lead == pytest.approx(EXTRA_MS, abs=2.5)
            assert table.loc[table["rank"] == r, "straggler_reason"].item().startswith("data ")
            assert f"holds each step up {score:.0f} ms" in table.loc[table["rank"] == r, "straggler_reason"].item()
        else:
            assert score == 0.0 and lead == 0.0
    shown = ranks.by_node(table)
    assert shown["rank"].tolist()[0] == SLOW and shown["node"].tolist()[:4] == ["node-b"] * 4
    assert shown["node"].tolist()[4:] == ["node-a"] * 4
    scores_b = shown["straggler_score"].tolist()[:4]
    assert scores_b == sorted(scores_b, reverse=True)
    assert table.loc[table["rank"] == SLOW, "straggler"].item()
