"""`inspector explain` on seeded loss spikes: one layer's update made 300-3000x larger at step 150 of
the engine's debug model (a per-layer learning-rate spike, four layers and seeds); the loss spikes
at 151 and the planted layer must be ranked first, a step before the spike. Also: the command's
report and JSON, its one-line errors, a healthy step and a pre-existing condition kept apart."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from inspector.views.explain import explain, spike_steps
from inspector.views.live import LiveRun
from tests.conftest import inspector_cli
from tests.explain.spikes import PlantedSpike, train_with_spike

SPIKE_STEP = 150
SEEDED = [PlantedSpike("layers.0.ffn", SPIKE_STEP, 300.0, seed=0),
          PlantedSpike("layers.1.attn", SPIKE_STEP, 3000.0, seed=1),
          PlantedSpike("layers.1.ffn", SPIKE_STEP, 1000.0, seed=2),
          PlantedSpike("head", SPIKE_STEP, 1000.0, seed=3)]


@pytest.fixture(scope="module")
def seeded_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[PlantedSpike, Path]:
    root = tmp_path_factory.mktemp("spikes")
    return {s: train_with_spike(root / f"{s.layer}-{s.seed}", s, steps=SPIKE_STEP + 6) for s in SEEDED}


@pytest.mark.parametrize("spike", SEEDED, ids=lambda s: f"{s.layer}-x{s.factor:g}")
def test_the_planted_layer_is_ranked_first(seeded_runs, spike: PlantedSpike) -> None:
    run = LiveRun(seeded_runs[spike])
    assert spike_steps(run)[0] == spike.step + 1                # the bad update shows in the next loss
    e = explain(run, spike.step + 1)
    first = e.first
    assert first is not None and first.subject.startswith(spike.layer + "."), e.leads[:3]
    assert first.signal == "update/weight ratio" and first.left_at == spike.step and first.steps_before == 1
    assert first.factor > 30                                     # the sketch sees the oversized update
    # nothing outside the planted layer moved before the spike
    assert all(lead.subject.startswith(spike.layer + ".") for lead in e.leads if lead.left_at < spike.step + 1)
    assert e.batch and e.rng_kept and "loss_spike" in e.spike


def test_a_healthy_step_explains_nothing(seeded_runs) -> None:
    run = LiveRun(seeded_runs[SEEDED[0]])
    e = explain(run, 120)
    assert e.spike == "" and e.judged > 50
    assert e.first is None or e.first.steps_before > 0 and len(e.leads) <= 2, e.leads


def test_the_command_prints_the_ranking_and_json(seeded_runs) -> None:
    path = seeded_runs[SEEDED[1]]
    res = inspector_cli("explain", str(path), "--width", "160")
    assert res.returncode == 0, res.stderr
    assert f"explain step {SPIKE_STEP + 1}" in res.stdout and "loss_spike" in res.stdout
    assert f"first to move: update/weight ratio of {SEEDED[1].layer}." in res.stdout
    assert "1 step before it" in res.stdout and "restore_rng" in res.stdout
    res = inspector_cli("explain", str(path), "--step", str(SPIKE_STEP + 1), "--json")
    data = json.loads(res.stdout)
    assert data["leads"][0]["subject"].startswith(SEEDED[1].layer) and data["step"] == SPIKE_STEP + 1
    assert data["batch"] and data["rng_kept"] is True


def test_one_line_errors(tmp_path: Path, seeded_runs) -> None:
    res = inspector_cli("explain", str(tmp_path / "nowhere"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "nowhere" in res.stderr
    res = inspector_cli("explain", str(seeded_runs[SEEDED[0]]), "--step", "99999")
    assert res.returncode == 2 and "outside the run" in res.stderr and res.stderr.count("\n") == 1
