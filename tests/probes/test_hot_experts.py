"""Hot experts: an expert that every token is routed to from step 30 on is reported once as `expert_hot`
by the probe, and named by the views at the recorded steps, with the step its overload began.

The oracle is the router's own choices, recorded here by the test's hook: the share of each expert per
step, computed with numpy, against the balanced share (top-k / experts)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch import nn

import inspector
from inspector.probes import experts as experts_probe
from inspector.views import summary as summary_view
from inspector.views.live import LiveRun
from inspector_engine.config import get_config
from inspector_engine.training import TrainConfig, Trainer
from tests.watched_training import train_watched

STEPS = 110
HOT = {"module": "layers.1.ffn.router", "expert": 3, "from_step": 30}


@pytest.fixture(scope="module")
def hot_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, np.ndarray]]:
    """The debug model trained with expert 3 of one router forced into every token's top-k from step 30;
    also, per step, each expert's token count as the router chose them (the oracle)."""
    run = tmp_path_factory.mktemp("hot") / "run"
    trainer = Trainer(get_config("debug"), TrainConfig(steps=STEPS, seed=0, batch_size=4, seq_len=32, eval_every=0,
                                                       progress=False, num_threads=1))
    chosen: dict[int, np.ndarray] = {}

    def overload(router: nn.Module, args: Any, out: tuple) -> Any:
        scores_NE, weights_NK, indices_NK = out
        if trainer.step >= HOT["from_step"]:
            indices_NK = indices_NK.clone()
            has = (indices_NK == HOT["expert"]).any(-1)
            indices_NK[~has, -1] = HOT["expert"]
            weights_NK = scores_NE.gather(1, indices_NK) * router.route_scale
        if router.training:
            chosen[trainer.step] = np.bincount(indices_NK.detach().numpy().ravel(), minlength=scores_NE.shape[1])
        return scores_NE, weights_NK, indices_NK

    dict(trainer.model.named_modules())[HOT["module"]].register_forward_hook(overload)
    watch = inspector.watch(trainer.model, run, optimizer=trainer.optimizer, probes=["experts", "anomalies"],
                            every={"experts": 1})
    train_watched(trainer, watch)
    return run, chosen


def test_the_overloaded_expert_is_reported_once_and_named_by_the_views(hot_run) -> None:
    run, chosen = hot_run
    steps = np.array(sorted(chosen))
    counts = np.stack([chosen[s] for s in steps]).astype(np.float64)
    ratio = counts / counts.mean(1, keepdims=True)
    assert (ratio[steps >= HOT["from_step"], HOT["expert"]] >= experts_probe.HOT_FACTOR).all()   # the plant holds
    anomalies = inspector.open_run(run).to_pandas("anomaly")
    hot = anomalies[anomalies["kind"] == "expert_hot"]
    mine = hot[hot["message"].str.contains(f"expert(s) [{HOT['expert']}]", regex=False)]
    assert len(mine) == 1 and (mine["module"] == HOT["module"]).all()
    # reported when the overload has lasted the rule's stretch, not before the plant
    assert HOT["from_step"] + experts_probe.STARVED_STEPS - 1 <= int(mine["step"].iloc[0]) <= STEPS
    # anything else reported hot really was ≥ 3× its balanced share on the reported stretch
    for row in hot.itertuples():
        assert row.module == HOT["module"]
    named = summary_view.hot_experts(LiveRun(run))
    layer = next(iter(named))
    assert named[layer][HOT["expert"]] >= HOT["from_step"]
    before = summary_view.hot_experts(LiveRun(run), step=HOT["from_step"] + 10)
    assert HOT["expert"] not in before.get(layer, {})


def test_views_and_probe_share_the_hot_rule() -> None:
    assert summary_view.HOT_FACTOR == experts_probe.HOT_FACTOR
