"""The Inference screen: an SVG snapshot of a deterministic inference run, and keys on a real one.

The real run is the engine's scheduler recorded in inference mode (attention every iteration);
the attention pane's numbers are checked against numpy's softmax over a full (no-cache) forward's
queries and keys, and the request table against the scheduler's own requests.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from textual.widgets import DataTable, Static

import inspector
from inspector.tui.app import InspectorApp
from inspector_engine.config import get_config
from inspector_engine.inference import BatchScheduler, SamplingParams
from inspector_engine.model import Transformer
from inspector_engine.tokenizer import ByteTokenizer
from tests.inference.test_decode_attention import _full_forward_rows
from tests.inference_runs import write_inference_run
from tests.tui.conftest import FROZEN_NOW, wait_until
from tests.tui.test_snapshots import TERMINAL, settled

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def synthetic_inference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tui-inf") / "inference"
    write_inference_run(path)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("tui-inf-real") / "gen"
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    tok = ByteTokenizer()
    sched = BatchScheduler(model, max_batch_size=2, max_batch_tokens=80)
    w = inspector.watch(model, path, mode="inference", every={"attention": 1}, tokenizer=tok)
    w.observe(sched)
    for i, text in enumerate(["Hello there", "To be, or not to be", "abc"]):
        sched.submit(tok.encode(text), 6, SamplingParams(temperature=1.0, seed=i))
    done = sched.run()
    w.close()
    return path, model, done


def test_inference_screen_snapshot(snap_compare, synthetic_inference) -> None:
    app = InspectorApp(synthetic_inference, screen="inference", frozen_now=FROZEN_NOW)
    assert snap_compare(app, terminal_size=(150, 46), run_before=settled)


def _text(app: InspectorApp, pane: str) -> str:
    return str(app.screen.query_one(pane, Static).render())


async def test_requests_keys_and_attention_of_a_chosen_token(served) -> None:
    path, model, done = served
    app = InspectorApp(path, screen="inference", frozen_now=FROZEN_NOW)
    async with app.run_test(size=(200, 60)) as pilot:
        await wait_until(pilot, lambda: app.settled)
        assert _text(app, "#inf-headline").startswith(f"{len(done)} requests")
        table = app.screen.query_one("#inf-requests", DataTable)
        assert sorted(int(k.value) for k in table.rows) == sorted(r.id for r in done)
        first = int(table.coordinate_to_cell_key((0, 0)).row_key.value)
        await pilot.press("down")                      # the second slowest request
        second = int(table.coordinate_to_cell_key((1, 0)).row_key.value)
        await wait_until(pilot, lambda: app.settled and app.request.request_id == second)
        assert _text(app, "#inf-tokens").startswith(f"request #{second}:")
        assert second != first
        req = next(r for r in done if r.id == second)
        seq = req.prompt + req.output
        oracle = _full_forward_rows(model, seq)
        for _ in range(8):                             # every recorded query of the request, via n
            text = _text(app, "#inf-attention")
            m = re.search(r"what token (\d+) .*?max ([0-9.]+) on token (\d+)", text, re.S)
            assert m, text
            q, top, at = int(m.group(1)), float(m.group(2)), int(m.group(3))
            want = oracle[0][0][q, :q + 1]
            assert top == pytest.approx(want.max(), abs=2e-3)
            assert want[at] == pytest.approx(want.max(), abs=2e-3)
            before = app.request.query
            await pilot.press("n")
            await wait_until(pilot, lambda: app.settled and app.request.query != before)
        await pilot.press("l")
        await wait_until(pilot, lambda: app.settled and app.request.layer == 1)
        assert "layer 1 head 0" in _text(app, "#inf-attention")


async def test_a_training_run_says_it_has_no_inference_records(synthetic4) -> None:
    path, _ = synthetic4
    app = InspectorApp(path, screen="inference", frozen_now=FROZEN_NOW)
    async with app.run_test(size=(150, 40)) as pilot:
        await wait_until(pilot, lambda: app.settled)
        assert "no inference records in this run" in str(app.screen.query_one("#message", Static).render())


def _drawn(app: InspectorApp, pane: str) -> str:
    """A pane's rich content as the text it draws at the pane's width."""
    import io

    from rich.console import Console

    static = app.screen.query_one(pane, Static)
    console = Console(width=static.content_region.width, file=io.StringIO(), record=True)
    console.print(static.content)
    return console.export_text()


async def test_narrow_terminal_stacks_the_panes_and_keeps_the_tables_whole(synthetic_inference) -> None:
    """At 80 columns the run-wide panes and the request viewer are stacked (side by side each
    clipped its tables to "m…" columns); widening the terminal puts them side by side again."""
    app = InspectorApp(synthetic_inference, screen="inference", frozen_now=FROZEN_NOW)
    async with app.run_test(size=(80, 40)) as pilot:
        await wait_until(pilot, lambda: app.settled)
        await pilot.pause()
        left, right = (app.screen.query_one(p).region for p in ("#inf-left", "#inf-right"))
        assert app.screen.has_class("narrow")
        assert right.y >= left.y + left.height and left.width >= 76 and right.width >= 76
        latency = _drawn(app, "#inf-latency")
        assert "p50" in latency and "TTFT" in latency and "…" not in latency
        await pilot.resize_terminal(160, 40)
        await pilot.pause()
        left, right = (app.screen.query_one(p).region for p in ("#inf-left", "#inf-right"))
        assert not app.screen.has_class("narrow") and right.x >= left.x + left.width and right.y == left.y


async def test_headline_says_what_the_inspectors_own_sampled_iterations_cost(tmp_path: Path) -> None:
    """Planted costs (attention +1.0 ms over two iterations, expert load +0.9 ms) in the TUI headline."""
    from tests.views.test_inference_cost import _write

    _write(tmp_path / "cost")
    app = InspectorApp(tmp_path / "cost", screen="inference", frozen_now=FROZEN_NOW)
    async with app.run_test(size=(160, 46)) as pilot:
        await wait_until(pilot, lambda: app.settled)
        text = str(app.screen.query_one("#inf-headline", Static).render())
        assert ("the Inspector's own sampled work: attention maps +1.00 ms (1 in 16), expert load +0.90 ms "
                "(1 in 16)") in text
        assert text.rstrip().endswith("decode time (in these latencies)")
