"""The Inference page on a real run recorded through the engine's scheduler in inference mode.

What the browser drew is compared with what the test itself saw: latencies from the run's rows
against the scheduler's request count, the expert heatmaps' stage totals against the test's own
router taps, each output token's bar against the request's tokens, and the attention bars of a
chosen output token against numpy's softmax over a full (no-cache) forward's queries and keys.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from playwright.sync_api import expect

import inspector
from inspector_engine.config import get_config
from inspector_engine.inference import BatchScheduler, SamplingParams
from inspector_engine.model import Transformer
from tests.dash_app.conftest import artifacts_dir, dash_server
from tests.dash_app.helpers import wait_figure, wait_title
from tests.inference.test_decode_attention import _full_forward_rows

PROMPTS = [[5, 6, 7, 8], list(range(20, 44)), [60, 61, 62], [9] * 10, [70, 71, 72, 73, 74, 75]]
NEW = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference-runs")
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    sched = BatchScheduler(model, max_batch_size=2, max_batch_tokens=80)
    routed = {"prefill": 0, "decode": 0}
    stage = {"now": "prefill"}
    sched.add_listener(lambda ev, obj: stage.__setitem__("now", ev) if ev in routed else None)
    for router in model.routers():
        router.register_forward_hook(lambda m, a, out: routed.__setitem__(stage["now"], routed[stage["now"]]
                                                                           + out[2].numel()))
    w = inspector.watch(model, root / "gen", mode="inference", every={"attention": 1})
    w.observe(sched)
    for i, p in enumerate(PROMPTS):
        sched.submit(p, NEW, SamplingParams(temperature=1.0, seed=i))
    done = sched.run()
    w.close()
    with dash_server(root) as srv:
        yield srv, model, done, routed


def test_inference_page_draws_the_runs_requests_experts_and_attention(page, served):
    srv, model, done, routed = served
    page.goto(f"{srv.url}/inference?run=gen")
    expect(page.locator("#run-header .status")).to_have_text("finished")
    expect(page.locator("#inf-headline")).to_contain_text(f"requests: {len(PROMPTS)}")
    ttft = wait_title(page, "inf-ttft", f"({len(PROMPTS)} requests)")
    assert len(ttft["data"][0]["x"]) == len(PROMPTS) and min(ttft["data"][0]["x"]) > 0
    wait_figure(page, "inf-throughput")
    occ = wait_figure(page, "inf-occupancy")
    running = next(t for t in occ["data"] if t["name"] == "running (batch)")
    assert max(running["y"]) == 2
    experts = wait_figure(page, "inf-experts", "f => f && f.data.length === 2")
    assert f"prefill ({routed['prefill']:,} assignments)" in page.locator("#inf-experts").inner_text()
    assert f"decode ({routed['decode']:,} assignments)" in page.locator("#inf-experts").inner_text()
    assert experts["data"][0]["type"] == "heatmap"

    # the slowest request is chosen first; its token bars are its output tokens
    slowest = max(done, key=lambda r: r.id)  # FIFO with a batch of 2: the last submitted finishes last
    tokens = wait_title(page, "inf-tokens", f"request #{slowest.id}:")
    assert len(tokens["data"][0]["y"]) == len(slowest.output)

    # attention of a chosen output token equals a full forward's row, with the request's tokens as labels
    page.locator("#inf-attn-step").click()
    page.get_by_role("option", name="output token 3", exact=False).click()
    seq = slowest.prompt + slowest.output
    q = len(slowest.prompt) + 3
    fig = wait_title(page, "inf-attention", f"layer 0 head 0: what token {q} ")
    want = _full_forward_rows(model, seq)[0][0][q, :q + 1]
    np.testing.assert_allclose(fig["data"][0]["y"], want, atol=2e-3)
    assert fig["data"][0]["x"][-1] == f"{q}:{seq[q]}"
    assert len(fig["data"][0]["x"]) == q + 1
    page.screenshot(path=str(artifacts_dir() / "inference.png"), full_page=True)
    assert not page.errors


def test_a_training_run_says_it_has_no_inference_records(page, tmp_path):
    torch.manual_seed(0)
    model = Transformer(get_config("debug"))
    with inspector.watch(model, tmp_path / "train", probes=["experts"]) as w:
        model(torch.randint(0, 256, (1, 8))).sum().backward()
        w.step()
    with dash_server(tmp_path) as srv:
        page.goto(f"{srv.url}/inference?run=train")
        expect(page.locator("#inf-headline")).to_contain_text("no inference records in this run")
        assert not page.errors


def test_headline_says_what_the_inspectors_own_sampled_iterations_cost(page, tmp_path) -> None:
    """Planted costs (attention +1.0 ms over two iterations, expert load +0.9 ms) read in the browser."""
    from tests.views.test_inference_cost import _write

    _write(tmp_path / "cost")
    with dash_server(tmp_path) as srv:
        page.goto(f"{srv.url}/inference?run=cost")
        headline = page.locator("#inf-headline")
        expect(headline).to_contain_text("Inspector's sampled work: attention maps +1.00 ms (1 in 16), "
                                         "expert load +0.90 ms (1 in 16)")
        expect(headline).to_contain_text("% of decode time, included above")
