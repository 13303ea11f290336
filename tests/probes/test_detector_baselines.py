"""Detectors judge against a healthy baseline: a lasting fault stays flagged and is reported once.

Real runs: the engine's debug model trained 120 steps with one attention head collapsed from step
15 on and one expert starved from step 20 on (planted the way `sample_runs/make_samples.py` does);
a tiny random-init Hugging Face BERT with one head's queries frozen huge for a while; a loss
plateau fed through `watch.step(loss=...)`. Expected flags come from the recorded raw numbers
(entropies, router choices), computed here with numpy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import inspector
from inspector_engine.config import get_config
from inspector_engine.model import Transformer
from inspector_engine.training import TrainConfig, Trainer
from inspector.probes import experts as experts_probe
from inspector.probes.attention.collapse import ENTROPY_RATIO, CollapseTracker
from inspector.views import summary as summary_view
from inspector.views.live import LiveRun
from inspector.views.summary import run_summary
from tests.watched_training import train_watched

STEPS = 120
COLLAPSE = {"module": "layers.1.attn.qk_capture", "layer": 1, "head": 2, "from_step": 15, "scale": 40.0}
STARVE = {"module": "layers.1.ffn.router", "expert": 5, "from_step": 20}
EVERY_ATTENTION = 5


def _healthy_reference(stats: pd.DataFrame, layer: int, head: int, before: int) -> float:
    """Median entropy of one head over the samples taken before its fault was planted."""
    rows = stats[(stats["layer"] == layer) & (stats["head"] == head) & (stats["step"] < before)]
    return float(np.median(rows["entropy"].to_numpy()))


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, np.ndarray]]]:
    """The debug model trained 120 steps with a head collapsed from step 15 and an expert starved
    from step 20, both to the end; also the router's own choices per step (the oracle)."""
    run = tmp_path_factory.mktemp("collapse") / "run"
    trainer = Trainer(get_config("debug"), TrainConfig(steps=STEPS, seed=0, batch_size=4, seq_len=32, eval_every=0,
                                                       progress=False, num_threads=1))
    modules = dict(trainer.model.named_modules())
    chosen: list[tuple[int, np.ndarray]] = []

    def collapse(module: nn.Module, args: Any, out: tuple[torch.Tensor, torch.Tensor]) -> Any:
        if trainer.step < COLLAPSE["from_step"]:
            return None
        q_BHTD, k_BHSD = out
        q_BHTD = q_BHTD.clone()
        q_BHTD[:, COLLAPSE["head"]] *= COLLAPSE["scale"]
        return q_BHTD, k_BHSD

    def starve(router: nn.Module, args: Any, out: tuple) -> Any:
        scores_NE, weights_NK, indices_NK = out
        if trainer.step >= STARVE["from_step"]:
            select_NE = scores_NE.clone()
            select_NE[:, STARVE["expert"]] = float("-inf")
            indices_NK = select_NE.topk(indices_NK.shape[1], dim=-1).indices
            weights_NK = scores_NE.gather(1, indices_NK)
            if router.norm_topk_prob:
                weights_NK = weights_NK / weights_NK.sum(-1, keepdim=True)
            weights_NK = weights_NK * router.route_scale
        if router.training:
            chosen.append((trainer.step, indices_NK.detach().numpy().copy()))
        return scores_NE, weights_NK, indices_NK

    modules[COLLAPSE["module"]].register_forward_hook(collapse)
    modules[STARVE["module"]].register_forward_hook(starve)
    watch = inspector.watch(trainer.model, run, optimizer=trainer.optimizer,
                            probes=["attention", "anomalies", "experts"],
                            every={"attention": EVERY_ATTENTION, "experts": 1})
    train_watched(trainer, watch)
    return run, chosen


def test_a_head_that_stays_collapsed_is_flagged_at_every_sample_and_reported_once(engine_run) -> None:
    run, _ = engine_run
    r = inspector.open_run(run)
    stats = r.to_pandas("attention_stats").sort_values("step")
    layer, head = COLLAPSE["layer"], COLLAPSE["head"]
    mine = stats[(stats["layer"] == layer) & (stats["head"] == head)]
    ref = _healthy_reference(stats, layer, head, COLLAPSE["from_step"])
    entropy = mine["entropy"].to_numpy()
    steps = mine["step"].to_numpy()
    low = entropy < ENTROPY_RATIO * ref
    assert low.any() and low[-1], "the planted fault collapses the head by the detector's own definition"
    onset = int(steps[np.argmax(low)])
    assert onset >= COLLAPSE["from_step"]
    # flagged at every sample from the onset to the end of the run, never before
    assert mine["collapsed"].tolist() == (steps >= onset).tolist()
    others = stats[(stats["layer"] != layer) | (stats["head"] != head)]
    assert not others["collapsed"].any()
    anomalies = r.to_pandas("anomaly")
    found = anomalies[anomalies["kind"] == "attention_collapse"]
    assert found[["step", "module"]].values.tolist() == [[onset, COLLAPSE["module"]]]
    assert f"head {head} " in found["message"].iloc[0]


def test_the_summary_shows_the_head_still_collapsed_and_the_expert_still_starved(engine_run) -> None:
    run, chosen = engine_run
    summary = run_summary(LiveRun(run))
    stats = inspector.open_run(run).to_pandas("attention_stats")
    flagged = stats[stats["collapsed"]]
    [h] = summary.collapsed_heads
    assert (h.layer, h.head) == (COLLAPSE["layer"], COLLAPSE["head"])
    assert h.first_step == int(flagged["step"].min())
    assert h.still_collapsed and h.last_sampled == h.last_flagged == (STEPS - 1) // EVERY_ATTENTION * EVERY_ATTENTION
    # the expert: the router's own choices say which experts got no token from step 20 on
    used = np.zeros(8, dtype=bool)
    for step, indices_NK in chosen:
        if step >= STARVE["from_step"]:
            used[np.unique(indices_NK)] = True
    assert np.flatnonzero(~used).tolist() == [STARVE["expert"]]
    [layer] = [e for e in summary.experts if e.name == STARVE["module"]]
    assert layer.starved_experts == [STARVE["expert"]]
    since = max(step for step, indices_NK in chosen if STARVE["expert"] in indices_NK) + 1
    assert since <= STARVE["from_step"]
    assert layer.starved_since == {STARVE["expert"]: since}


def test_the_engine_run_raises_no_other_alarm(engine_run) -> None:
    """Loss falling fast early on is no spike; only the two planted faults are reported, each once."""
    run, _ = engine_run
    anomalies = inspector.open_run(run).to_pandas("anomaly")
    assert sorted(anomalies["kind"].tolist()) == ["attention_collapse", "expert_starved"]
    starved = anomalies[anomalies["kind"] == "expert_starved"]
    assert len(starved) == 1 and starved["step"].iloc[0] < STARVE["from_step"] + experts_probe.STARVED_STEPS
    # the per-step flag the views derive from the recorded counts: set from the probe's onset to the end
    loads = inspector.open_run(run).to_pandas("expert_load").sort_values("step")
    loads = loads[loads["name"] == STARVE["module"]]
    mask_SE, _ = summary_view.starved_mask(loads["step"].to_numpy(), np.stack(loads["counts"].to_list()))
    flagged = loads["step"].to_numpy()[mask_SE[:, STARVE["expert"]]]
    assert flagged.tolist() == list(range(int(starved["step"].iloc[0]), STEPS))
    assert not np.delete(mask_SE, STARVE["expert"], axis=1).any()


def test_summary_and_probe_use_one_starvation_rule() -> None:
    assert summary_view.STARVED_STEPS == experts_probe.STARVED_STEPS
    assert summary_view.STARVED_MIN_SAMPLES == experts_probe.STARVED_MIN_SAMPLES


def test_one_empty_step_is_not_starvation_in_the_summary(tmp_path: Path) -> None:
    """60 steps of normal batches with expert 5 never picked, then a last batch of one token (an
    epoch's short tail): only expert 5 is starved, not every expert the one token skipped."""
    torch.manual_seed(0)
    model = Transformer(get_config("debug_v3", n_expert_groups=1, n_limited_groups=1)).train()
    router = model.routers()[0]
    router.bias[5] = -100.0                       # sigmoid scores lie in (0, 1): expert 5 never wins
    chosen: list[np.ndarray] = []
    router.register_forward_hook(lambda mod, args, out: chosen.append(out[2].numpy().copy()))
    w = inspector.watch(model, tmp_path / "run", probes=["experts"], every={"experts": 1})
    with torch.no_grad():
        for step in range(61):
            model(torch.randint(0, 256, (1, 1) if step == 60 else (2, 16)))
            w.step()
    w.close()
    e = router.n_experts
    counts_SE = np.stack([np.bincount(c.reshape(-1), minlength=e) for c in chosen])
    assert (counts_SE[:, 5] == 0).all()
    skipped_last = set(np.flatnonzero(counts_SE[-1] == 0).tolist()) - {5}
    assert skipped_last, "the one-token step leaves other experts empty"
    assert not any((counts_SE[:-1, x] == 0).all() for x in skipped_last)
    name = next(n for n, m in model.named_modules() if m is router)
    [layer] = [b for b in run_summary(LiveRun(tmp_path / "run")).experts if b.name == name]
    assert layer.starved_experts == [5] and layer.starved_since == {5: 0}


# ---- a tiny random-init Hugging Face BERT ------------------------------------------------------

transformers = pytest.importorskip("transformers")
BERT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=32)
FROZEN = {"layer": 1, "head": 1, "from_step": 6, "until_step": 22, "steps": 30}


def test_hf_bert_head_frozen_collapsed_stays_flagged_then_clears(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**BERT)).eval()
    query = model.encoder.layer[FROZEN["layer"]].attention.self.query
    d = BERT["hidden_size"] // BERT["num_attention_heads"]
    rows = slice(FROZEN["head"] * d, (FROZEN["head"] + 1) * d)
    healthy_weight = query.weight.detach().clone()
    w = inspector.watch(model, tmp_path / "run", probes=["attention"], every=1)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for step in range(FROZEN["steps"]):
            if step == FROZEN["from_step"]:   # the head's scores become huge: it looks at one or two keys
                query.weight[rows] = torch.randn(d, BERT["hidden_size"], generator=torch.Generator().manual_seed(2)) * 16
            if step == FROZEN["until_step"]:
                query.weight.copy_(healthy_weight)
            model(input_ids=torch.randint(0, BERT["vocab_size"], (2, 16), generator=gen))
            w.step()
    w.close()
    r = inspector.open_run(tmp_path / "run")
    stats = r.to_pandas("attention_stats").sort_values("step")
    layer, head = FROZEN["layer"], FROZEN["head"]
    mine = stats[(stats["layer"] == layer) & (stats["head"] == head)]
    steps = mine["step"].to_numpy()
    planted = (steps >= FROZEN["from_step"]) & (steps < FROZEN["until_step"])
    ref = _healthy_reference(stats, layer, head, FROZEN["from_step"])
    assert (mine["entropy"].to_numpy()[planted] < ENTROPY_RATIO * ref).all()   # collapsed by definition
    assert (mine["max_weight"].to_numpy()[planted] < 0.95).all()  # …without always being a one-token sink
    assert mine["collapsed"].tolist() == planted.tolist()
    assert not stats[(stats["layer"] != layer) | (stats["head"] != head)]["collapsed"].any()
    found = r.to_pandas("anomaly")
    assert found[["kind", "step"]].values.tolist() == [["attention_collapse", FROZEN["from_step"]]]
    [h] = run_summary(LiveRun(tmp_path / "run")).collapsed_heads
    assert (h.first_step, h.last_flagged, h.last_sampled) == (FROZEN["from_step"], FROZEN["until_step"] - 1,
                                                              FROZEN["steps"] - 1)
    assert not h.still_collapsed


def test_a_non_finite_sample_does_not_clear_a_collapsed_head() -> None:
    tracker = CollapseTracker()
    for _ in range(3):
        tracker.update("m", 0, 2.0, 0.2, 16)
    assert tracker.update("m", 0, 0.3, 0.6, 16).newly
    nan = tracker.update("m", 0, float("nan"), float("nan"), 16)
    assert nan.collapsed and not nan.newly
    again = tracker.update("m", 0, 0.3, 0.6, 16)
    assert again.collapsed and not again.newly        # the same collapse, not a new one
    assert list(tracker.history[("m", 0)]) == [2.0, 2.0, 2.0]


# ---- loss plateau through watch.step(loss=...) ----------------------------------------------------

def test_a_loss_plateau_is_one_spike_and_spikes_after_it_are_still_seen(tmp_path: Path) -> None:
    """healthy ~2.0 (slowly falling, noisy) 40 steps -> plateau at 5.0 for 80 steps with a spike to
    15 on top at step 120 -> back to ~2.0 -> a new spike to 5.0 at step 146."""
    rng = np.random.default_rng(0)
    healthy = lambda n, s0: 2.0 - 0.002 * (s0 + np.arange(n)) + 0.03 * rng.standard_normal(n)  # noqa: E731
    plateau = lambda n: 5.0 + 0.1 * rng.standard_normal(n)                                        # noqa: E731
    loss = np.concatenate([healthy(40, 0), plateau(80), [15.0], plateau(10), healthy(15, 131), [5.0],
                           healthy(10, 147)])
    w = inspector.watch(nn.Linear(2, 2), tmp_path / "run", probes=["anomalies"])
    for value in loss:
        w.step(loss=torch.tensor(float(value)))
    w.close()
    a = inspector.open_run(tmp_path / "run").to_pandas("anomaly")
    spikes = a[a["kind"] == "loss_spike"].sort_values("step")
    assert spikes["step"].tolist() == [40, 120, 146]
    np.testing.assert_allclose(spikes["value"].to_numpy(), loss[[40, 120, 146]], rtol=1e-6)
    assert "raised median" in spikes["message"].iloc[1]
    assert len(a) == 3


def test_low_load_experts_of_the_healthy_sample_are_never_called_starved() -> None:
    run = LiveRun(Path(__file__).resolve().parents[2] / "sample_runs" / "healthy-moe")
    loads = run.frame("expert_load")
    zero_hits = 0
    for _, rows in loads.sort_values("step").groupby("name"):
        counts_SE = np.stack(rows["counts"].to_list())
        zero_hits += int((counts_SE == 0).sum())
        mask_SE, _ = summary_view.starved_mask(rows["step"].to_numpy(), counts_SE)
        assert not mask_SE.any()
    assert zero_hits > 0, "some low-load expert does get no token at some recorded step"
    assert all(e.starved_experts == [] for e in run_summary(run).experts)
