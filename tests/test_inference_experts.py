"""Issue 14, defect 6: expert load is recorded during inference, marked as inference, and kept
apart from training load by the probe (kinds `expert_load` / `expert_load_inference`), its
starvation detector and the views.

Oracle: the routers' own top-k choices, collected by a forward hook of the test's own on every
router and counted with `np.bincount`, labelled by the test code that ran them (never by the
probe's rule); for the `debug` config the choices are also recomputed from the router's input.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import inspector
from inspector_engine.config import get_config
from inspector_engine.inference.generate import generate
from inspector_engine.model import Transformer
from inspector.probes.experts import STARVED_STEPS
from inspector.views import experts as views
from inspector.views.live import LiveRun

VOCAB = 256


class RouterTap:
    """The test's own count of every router forward's top-k ids, per (label, step, router)."""

    def __init__(self, model: Transformer) -> None:
        self.names = {m: n for n, m in model.named_modules() if m in model.routers()}
        self.label = "none"
        self.step = 0
        self.forwards: dict[tuple[str, int, str], int] = defaultdict(int)
        self.ids: dict[tuple[str, int, str], list[np.ndarray]] = defaultdict(list)
        self.handles = [r.register_forward_hook(self._hook) for r in model.routers()]

    def _hook(self, mod: nn.Module, args: tuple, out: tuple) -> None:
        key = (self.label, self.step, self.names[mod])
        ids_NK = out[2].detach().numpy().copy()
        if mod.score_func == "softmax" and mod.n_groups == 1:  # recompute the choice from the input
            x_ND = args[0].detach().float()
            mine_NK = torch.topk(torch.softmax(x_ND @ mod.weight.detach().float().T, -1), mod.top_k).indices
            np.testing.assert_array_equal(np.sort(mine_NK.numpy(), 1), np.sort(ids_NK, 1))
        self.ids[key].append(ids_NK.reshape(-1))
        self.forwards[key] += 1

    def counts(self, labels: tuple[str, ...], step: int, name: str, n_experts: int) -> np.ndarray:
        """Assignments per expert of the forwards labelled `labels` at `step` of router `name`."""
        ids = [a for lab in labels for a in self.ids.get((lab, step, name), [])]
        return np.bincount(np.concatenate(ids), minlength=n_experts) if ids else np.zeros(n_experts, np.int64)

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self.handles:
            h.remove()


def _model(config: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(get_config(config))


def _prompt(b: int = 2, t: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def _loads(run: Path, kind: str) -> pd.DataFrame:
    return inspector.open_run(run).to_pandas(kind)


# ---- KV-cache generation under no_grad ------------------------------------------------------------

@dataclass
class Generated:
    run: Path
    tap: RouterTap
    routers: dict[str, int]   # name -> experts
    top_k: int


@pytest.fixture(scope="module", params=["debug", "debug_v3"])
def generated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Generated:
    """Inference only: three KV-cache generations, a `Watch.step()` after the first two; the third
    one's forwards are recorded when the watch closes."""
    model = _model(request.param)
    tap = RouterTap(model)
    tap.label = "generate"
    run = tmp_path_factory.mktemp(f"gen_{request.param}") / "run"
    w = inspector.watch(model, run, probes=["experts"], every={"experts": 1})
    for step in range(3):
        tap.step = step
        out = generate(model, _prompt(seed=step), max_new_tokens=5, use_cache=True)
        assert out.shape == (2, 11)
        if step < 2:
            w.step()
    w.close()
    tap.remove()
    routers = {tap.names[r]: r.n_experts for r in model.routers()}
    return Generated(run, tap, routers, model.routers()[0].top_k)


def test_kv_cache_generation_counts_equal_the_routers_own_choices(generated: Generated) -> None:
    df = _loads(generated.run, "expert_load_inference")
    assert sorted(df["step"].unique().tolist()) == [0, 1, 2]
    assert len(df) == 3 * len(generated.routers)
    for step in range(3):
        for name, n_experts in generated.routers.items():
            # prefill + 4 single-token decode forwards (the 5th token needs no forward)
            assert generated.tap.forwards[("generate", step, name)] == 5
            row = df[(df["step"] == step) & (df["name"] == name)].iloc[0]
            expected = generated.tap.counts(("generate",), step, name, n_experts)
            np.testing.assert_array_equal(np.asarray(row["counts"]), expected)
            assert expected.sum() == (2 * 6 + 2 * 4) * generated.top_k
            assert row["imbalance"] == pytest.approx(expected.max() / expected.mean())
            assert row["aux_loss"] is None or np.isnan(row["aux_loss"])


def test_inference_is_not_recorded_as_training(generated: Generated) -> None:
    assert _loads(generated.run, "expert_load").empty


def test_views_of_an_inference_only_run_show_inference(generated: Generated) -> None:
    run = LiveRun(generated.run)
    assert views.expert_phases(run) == ["inference"]
    assert views.resolve_phase(run) == "inference"
    names = sorted(generated.routers)
    layers, counts = views.expert_counts(run, step=1)
    _, explicit = views.expert_counts(run, step=1, phase="inference")
    np.testing.assert_array_equal(counts, explicit)
    for i, name in enumerate(names):
        np.testing.assert_array_equal(counts[i], generated.tap.counts(("generate",), 1, name, generated.routers[name]))
    assert views.expert_steps(run) == [0, 1, 2]
    assert views.expert_counts(run, step=1, phase="train")[0] == []
    assert len(views.imbalance_series(run)) == 3 * len(names)


# ---- training and inference in one run -----------------------------------------------------------

TRAIN_LABELS = ("train", "eval_mode_trained")
INFERENCE_LABELS = ("eval_mode_no_backward", "no_grad", "generate", "explicit_eval")
STEPS = 3


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    """Every step: a training forward/backward, an eval-mode forward trained through (dropout off),
    an eval-mode forward with autograd on but no backward, a no_grad forward, a KV-cache
    generation and a train-mode forward inside `Watch.phase("eval")`."""
    model = _model("debug_v3", seed=3)
    tap = RouterTap(model)
    run = tmp_path_factory.mktemp("mixed") / "run"
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    w = inspector.watch(model, run, probes=["experts"], optimizer=opt, every={"experts": 1})
    for step in range(STEPS):
        tap.step = step
        opt.zero_grad()
        model.train()
        tap.label = "train"
        model(_prompt(2, 8, 10 + step)).logsumexp(-1).mean().backward()
        model.eval()
        tap.label = "eval_mode_trained"
        model(_prompt(1, 8, 20 + step)).logsumexp(-1).mean().backward()
        tap.label = "eval_mode_no_backward"
        model(_prompt(1, 5, 30 + step)).sum()
        tap.label = "no_grad"
        with torch.no_grad():
            model(_prompt(1, 7, 40 + step))
        tap.label = "generate"
        generate(model, _prompt(1, 4, 50 + step), max_new_tokens=3)
        model.train()
        tap.label = "explicit_eval"
        with w.phase("eval"):
            model(_prompt(1, 6, 60 + step)).sum()
        tap.label = "none"
        opt.step()
    w.close()
    tap.remove()
    routers = {tap.names[r]: r.n_experts for r in model.routers()}
    return Generated(run, tap, routers, model.routers()[0].top_k)


@pytest.mark.parametrize("kind,labels", [("expert_load", TRAIN_LABELS), ("expert_load_inference", INFERENCE_LABELS)])
def test_training_and_inference_are_recorded_apart(mixed: Generated, kind: str, labels: tuple[str, ...]) -> None:
    df = _loads(mixed.run, kind)
    assert len(df) == STEPS * len(mixed.routers)
    for step in range(STEPS):
        for name, n_experts in mixed.routers.items():
            row = df[(df["step"] == step) & (df["name"] == name)].iloc[0]
            expected = mixed.tap.counts(labels, step, name, n_experts)
            np.testing.assert_array_equal(np.asarray(row["counts"]), expected)


def test_views_default_to_training_and_show_inference_on_request(mixed: Generated) -> None:
    run = LiveRun(mixed.run)
    names = sorted(mixed.routers)
    assert views.expert_phases(run) == ["train", "inference"]
    assert views.resolve_phase(run) == "train"
    for phase, labels in ((None, TRAIN_LABELS), ("train", TRAIN_LABELS), ("inference", INFERENCE_LABELS)):
        layers, counts = views.expert_counts(run, step=2, phase=phase)
        assert len(layers) == len(names)
        for i, name in enumerate(names):
            np.testing.assert_array_equal(counts[i], mixed.tap.counts(labels, 2, name, mixed.routers[name]))
        steps, share = views.expert_share_over_time(run, layer=layers[0], phase=phase)
        assert steps.tolist() == list(range(STEPS))
        first = mixed.tap.counts(labels, 0, names[0], mixed.routers[names[0]])
        np.testing.assert_allclose(share[:, 0], first / first.sum())
    train = views.imbalance_series(run)
    inference = views.imbalance_series(run, phase="inference")
    assert len(train) == len(inference) == STEPS * len(names)
    assert not np.allclose(train["imbalance"].to_numpy(), inference["imbalance"].to_numpy())
    with pytest.raises(ValueError):
        views.resolve_phase(run, "serving")


def test_a_run_recorded_before_inference_load_reads_as_training(tmp_path: Path) -> None:
    """A run holding only `expert_load` rows (all runs written before this change) reads as before."""
    w = inspector.watch(nn.Linear(2, 2), tmp_path / "run", probes="none")
    w.recorder.submit("expert_load", {"name": ["layers.1.ffn.router"], "layer": [1], "counts": [[5, 0, 3, 8]],
                               "imbalance": [2.0], "cv": [0.5], "router_entropy": [1.0], "dropped": [0],
                               "aux_loss": [None], "bias": [None]}, rows=1, step=4)
    w.close()
    run = LiveRun(tmp_path / "run")
    assert views.expert_phases(run) == ["train"]
    layers, counts = views.expert_counts(run, step=10)
    assert layers == [1] and counts.tolist() == [[5, 0, 3, 8]]
    assert views.expert_counts(run, step=10, phase="inference")[0] == []


# ---- starvation -----------------------------------------------------------------------------------

def _starved_inference(tmp: Path, train_first: bool) -> pd.DataFrame:
    """`STARVED_STEPS + 5` inference steps in which router 0's experts 2 and 3 can never be chosen; with
    `train_first`, one training step before them. Returns the run's `expert_starved` anomalies."""
    model = _model("debug_v3", seed=5)
    router = model.routers()[0]
    w = inspector.watch(model, tmp / "run", probes=["experts"], every={"experts": 1})
    if train_first:
        model.train()
        model(_prompt(2, 8, 1)).logsumexp(-1).mean().backward()
        w.step()
    model.eval()
    router.bias[3] = -100.0   # sigmoid scores lie in (0, 1): expert 3, and with it group {2, 3}, never wins
    with torch.no_grad():
        for step in range(STARVED_STEPS + 5):
            model(_prompt(1, 4, 100 + step))
            w.step()
    w.close()
    df = _loads(tmp / "run", "anomaly")
    return df[df["kind"] == "expert_starved"] if not df.empty else df


def test_an_inference_only_run_reports_a_starved_expert(tmp_path: Path) -> None:
    starved = _starved_inference(tmp_path, train_first=False)
    assert len(starved) == 1
    row = starved.iloc[0]
    assert row["module"] == "layers.1.ffn.router"
    assert "expert(s) [2, 3] received no token in any recorded inference step" in row["message"]
    assert row["step"] == STARVED_STEPS - 1 and row["value"] == 2


def test_inference_starvation_is_not_judged_once_the_run_trains(tmp_path: Path) -> None:
    assert _starved_inference(tmp_path, train_first=True).empty
    assert not _loads(tmp_path / "run", "expert_load_inference").empty


def test_summary_reports_balance_per_phase(mixed: Generated) -> None:
    """`inspector summary`'s expert table: one row per layer and phase, each phase's imbalance
    computed from the test's own counts (max/mean tokens per expert)."""
    from inspector.views.summary import run_summary

    summary = run_summary(LiveRun(mixed.run))
    assert [e.phase for e in summary.experts] == ["train"] * len(mixed.routers) + ["inference"] * len(mixed.routers)
    for e in summary.experts:
        labels = TRAIN_LABELS if e.phase == "train" else INFERENCE_LABELS
        n_experts = mixed.routers[e.name]
        per_step = [mixed.tap.counts(labels, s, e.name, n_experts) for s in range(STEPS)]
        imbalance = [c.max() / c.mean() for c in per_step]
        np.testing.assert_allclose(e.mean_imbalance, np.mean(imbalance), rtol=1e-5)
        np.testing.assert_allclose(e.last_imbalance, imbalance[-1], rtol=1e-5)


class ToyRouter(nn.Module):
    """A router whose expert ids the test dictates per call, some out of range (-1: a dropped
    token; `n_experts` and above: invalid), as capacity-limited routers return them."""

    n_experts = 4
    top_k = 2

    def __init__(self, ids: list[torch.Tensor]) -> None:
        super().__init__()
        self.proj = nn.Linear(8, self.n_experts)
        self.ids = ids

    def forward(self, x_NC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.last = self.ids.pop(0)
        return self.proj(x_NC).softmax(-1), self.last


class ToyMoE(nn.Module):
    def __init__(self, ids: list[torch.Tensor]) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.router = ToyRouter(ids)

    def forward(self, tokens_BT: torch.Tensor) -> torch.Tensor:
        x_NC = self.embed(tokens_BT).reshape(-1, 8)
        scores_NE, _ = self.router(x_NC)
        return scores_NE


def test_window_sums_count_every_id_once_and_out_of_range_ids_as_dropped(tmp_path: Path) -> None:
    """Expert load recorded every 4th iteration holds the sum of the 4 iterations' ids per stage
    (the hooks of the iterations between records only keep the ids), ids outside [0, E) are
    counted as dropped, not in any expert, and ids the model changes after the call are counted
    as they were."""
    g = torch.Generator().manual_seed(0)
    shapes = [(6, 2)] + [(2, 2)] * 7                       # one prefill of 2 x 3 tokens, then decodes of 2 rows
    ids = [torch.randint(-1, 6, s, generator=g) for s in shapes]
    kept = [t.clone() for t in ids]
    model = ToyMoE(ids).eval()
    w = inspector.watch(model, tmp_path / "run", mode="inference", probes=["experts"], every={"experts": 4},
                        hang_after_s=None)
    with torch.no_grad():
        model(torch.randint(0, 16, (2, 3)))
        model.router.last.fill_(3)                          # changed after the call: counted as it was
        for _ in range(7):
            model(torch.randint(0, 16, (2, 1)))
            model.router.last.fill_(3)
    w.close()
    df = inspector.open_run(tmp_path / "run").to_pandas("expert_load_inference")
    for stage, calls in (("prefill", [0]), ("decode", list(range(1, 8)))):
        flat = torch.cat([kept[i].reshape(-1) for i in calls]).numpy()
        valid = flat[(flat >= 0) & (flat < 4)]
        rows = df[df["stage"] == stage]
        got = np.sum(np.stack(rows["counts"].to_list()), axis=0)
        np.testing.assert_array_equal(got, np.bincount(valid, minlength=4))
        assert int(rows["dropped"].sum()) == int(((flat < 0) | (flat >= 4)).sum()) > 0
