"""The shipped sample runs: small, readable, regenerated deterministically, and `inspector summary`
finds every fault planted in them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inspector.views.live import LiveRun
from inspector.views.summary import run_summary
from tests.conftest import ROOT, inspector_cli

SAMPLES = ROOT / "sample_runs"
NAMES = ["healthy-moe", "faults", "straggler-4rank", "inference"]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_samples_exist_and_stay_small() -> None:
    for name in NAMES:
        run = LiveRun(SAMPLES / name)
        assert run.status() == "finished", name
        assert run.reader.problems == [], name
    assert sum(_size(SAMPLES / n) for n in NAMES) <= 20 * 1024 * 1024


def test_summary_finds_every_planted_fault() -> None:
    run = LiveRun(SAMPLES / "faults")
    faults = run.meta.config["planted_faults"]
    summary = run_summary(run)
    groups = {g.kind: g for g in summary.anomalies}

    spike = groups["loss_spike"]
    assert spike.first_step == faults["lr_spike"]["step"] + 1        # the bad update shows in the next loss

    nf = summary.first_nonfinite
    assert nf is not None and nf.kind == "nonfinite_activation"
    assert (nf.first_step, nf.first_module) == (faults["nan"]["step"], faults["nan"]["module"])

    starved = groups["expert_starved"]
    assert starved.first_module == faults["starved_expert"]["module"]
    assert f"[{faults['starved_expert']['expert']}]" in starved.first_message
    layer = [e for e in summary.experts if e.name == faults["starved_expert"]["module"]][0]
    assert layer.starved_experts == [faults["starved_expert"]["expert"]]

    head = faults["collapsed_head"]
    assert groups["attention_collapse"].first_step == head["from_step"]
    assert summary.collapsed_heads == [(head["layer"], head["head"], head["from_step"])]

    text = inspector_cli("summary", str(SAMPLES / "faults"), "--width", "200").stdout
    for needle in ("loss_spike", "expert_starved", "attention_collapse", f"step {faults['nan']['step']}",
                   faults["nan"]["module"], f"L{head['layer']}·H{head['head']}"):
        assert needle in text, needle


def test_summary_flags_the_straggler_and_a_healthy_run_is_quiet() -> None:
    summary = run_summary(LiveRun(SAMPLES / "straggler-4rank"))
    assert summary.ranks == 4 and [s[:2] for s in summary.stragglers] == [(2, "compute_ms")]
    healthy = run_summary(LiveRun(SAMPLES / "healthy-moe"))
    assert healthy.first_nonfinite is None and healthy.stragglers == []
    assert healthy.loss_last < healthy.loss_first - 1.0
    assert all(e.starved_experts == [] for e in healthy.experts)
    assert sorted((e.phase, e.name) for e in healthy.experts) == [(p, f"layers.{l}.ffn.router")    # eval forwards
                                                                  for p in ("inference", "train") for l in (1, 2)]


@pytest.mark.slow
def test_faults_sample_regenerates_identically(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(SAMPLES / "make_samples.py"), "--only", "faults", "--out", str(tmp_path)],
                   check=True, capture_output=True, cwd=ROOT)
    fresh, shipped = LiveRun(tmp_path / "faults"), LiveRun(SAMPLES / "faults")

    def losses(run: LiveRun) -> np.ndarray:
        df = run.frame("scalar")
        return df[df["name"] == "loss"].sort_values("step")["value"].to_numpy()

    np.testing.assert_allclose(losses(fresh), losses(shipped), rtol=1e-4)
    key = ["step", "kind", "module"]
    assert fresh.frame("anomaly")[key].values.tolist() == shipped.frame("anomaly")[key].values.tolist()


def test_long_context_sample_holds_pooled_32k_attention() -> None:
    """`long-context-32k`: one 32,768-token forward; maps pooled to 128 × 128 whose rows sum to 1, the
    last query's full row, statistics over all 32,768 rows, and a distance profile per head."""
    run = LiveRun(SAMPLES / "long-context-32k")
    assert run.status() == "finished" and run.reader.problems == []
    assert _size(SAMPLES / "long-context-32k") <= 2 * 1024 * 1024
    probs, row = run.reader.fetch("attention_map", step=0, layer=0)
    assert (row["query_len"], row["key_len"], row["row_pool"], row["key_pool"]) == (32768, 32768, 256, 256)
    assert probs.shape[1:] == (128, 128)
    np.testing.assert_allclose(probs.astype(np.float64).sum(-1), 1.0, atol=2e-2)
    full, meta = run.reader.fetch("attention_rows", step=0, layer=0)
    assert meta["positions"] == [32767] and full.shape[1:] == (1, 32768)
    np.testing.assert_allclose(full.astype(np.float64).sum(-1), 1.0, atol=2e-2)
    stats = run.frame("attention_stats")
    assert (stats["rows"] == 32768).all() and (stats["keys"] == 32768).all()
    assert all(abs(sum(d) - 1.0) < 1e-3 for d in stats["distance"])


def test_inference_sample_holds_queued_requests_their_tokens_and_attention() -> None:
    """`inference`: 24 requests served 4 at a time, so most queue; every request's tokens with text,
    attention of chosen tokens over the cache, expert load split by stage."""
    from inspector.views import inference as views

    run = LiveRun(SAMPLES / "inference")
    assert views.is_inference_run(run)
    requests = views.requests_frame(run)
    assert len(requests) == 24 and (requests["finished_reason"] == "length").all()
    assert requests["generation_tokens"].tolist() == [24 if i % 6 else 60 for i in range(24)]
    assert (requests["queue_time_s"] > 0).sum() >= 20                  # 4 rows at a time: the rest wait
    labels, prompt_len = views.request_tokens(views.request_row(requests, 18))
    assert prompt_len == requests["prompt_tokens"].iloc[18] and len(labels) == prompt_len + 60
    shown = views.requests_with_attention(run)
    assert len(shown) >= 12
    stages = set(views.expert_stage_frame(run)["stage"])
    assert stages == {"prefill", "decode"}
