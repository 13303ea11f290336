"""The replay probe: a fingerprint of every training forward's batch, and the generators' states at a
step an anomaly was reported at, set back by `inspector.restore_rng` (checked against the draws the
test itself made at the start of that step)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import inspector

STEPS, BAD_STEP, ACCUM = 8, 5, 2


def _train(run: Path) -> tuple[dict[int, tuple], list[list[torch.Tensor]]]:
    """A small model with dropout, two micro-batches per step and a NaN loss at BAD_STEP; the draws
    the test makes at the start of each step and the batches it trained on."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Dropout(0.3), nn.Linear(16, 50))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    draws, batches = {}, []
    with inspector.watch(model, run, optimizer=opt, probes=["replay", "anomalies"], hang_after_s=None) as w:
        for step in range(STEPS):
            draws[step] = (torch.rand(3), random.random(), np.random.rand())   # what "the data pipeline" draws
            micro = [torch.randint(0, 50, (4, 12)) for _ in range(ACCUM)]
            batches.append(micro)
            opt.zero_grad()
            for x in micro:
                loss = nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
                (loss / ACCUM).backward()
            opt.step()
            w.step(loss=loss * float("nan") if step == BAD_STEP else loss)
            with torch.no_grad():
                model.eval()
                model(micro[0])            # an evaluation forward: not a training batch
                model.train()
    return draws, batches


def test_every_training_forward_has_its_fingerprint(tmp_path: Path) -> None:
    _, batches = _train(tmp_path / "run")
    rows = inspector.open_run(tmp_path / "run").to_pandas("batch")
    assert len(rows) == STEPS * ACCUM                                   # the eval forwards are not batches
    for step, micro in enumerate(batches):
        assert inspector.batch_at(tmp_path / "run", step) == [inspector.fingerprint(x) for x in micro]
    assert rows["fingerprint"].nunique() == STEPS * ACCUM              # every random batch differs
    assert set(rows["shapes"]) == {"4×12 int64"}
    x = batches[0][0]
    swapped = x.clone()
    swapped[0, [0, 1]] = x[0, [1, 0]]
    changed = x.clone()
    changed[3, 11] = (x[3, 11] + 1) % 50
    assert len({inspector.fingerprint(t) for t in (x, swapped, changed, x.int(), x.view(12, 4))}) == 5
    assert inspector.fingerprint(x.clone()) == inspector.fingerprint(x)


def test_generator_states_at_the_anomaly_replay_the_steps_draws(tmp_path: Path) -> None:
    draws, _ = _train(tmp_path / "run")
    run = inspector.open_run(tmp_path / "run")
    anomalies = run.to_pandas("anomaly")
    assert (anomalies["step"] == BAD_STEP).any()
    assert sorted(run.to_pandas("rng_state")["step"].unique()) == [BAD_STEP]   # only where an anomaly was
    restored = inspector.restore_rng(tmp_path / "run", BAD_STEP)
    assert set(restored) == {"torch.cpu", "python.random", "numpy.random"}
    cpu, py, nump = draws[BAD_STEP]
    assert torch.equal(torch.rand(3), cpu)
    assert random.random() == py
    assert np.random.rand() == nump
    with pytest.raises(LookupError, match="no generator state recorded for step 2"):
        inspector.restore_rng(tmp_path / "run", 2)
