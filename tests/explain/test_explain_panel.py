"""The Overview's explain panel without a server (`explain_impl`): which spike it explains for the
selected step, and what it says when there is none."""
from __future__ import annotations

from pathlib import Path

from inspector.dash_app.pages.overview_explain import explain_impl
from inspector.views.live import LiveRun

SAMPLES = Path(__file__).resolve().parents[2] / "sample_runs"


def _text(children) -> str:
    out = []

    def walk(c):
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, (list, tuple)):
            for x in c:
                walk(x)
        elif getattr(c, "children", None) is not None:
            walk(c.children)
    walk(children)
    return " ".join(out)


def test_a_step_after_the_spike_explains_the_last_spike_before_it() -> None:
    run = LiveRun(SAMPLES / "faults")
    children, fig = explain_impl(run, 80)
    text = _text(children)
    assert "step 80 has no loss spike: explaining the last one before it, step 61" in text
    assert "first to move: update/weight ratio of layers.0.ffn." in text
    assert fig.layout.meta["leads"][0].startswith("update/weight ratio · layers.0.ffn.")


def test_before_any_spike_and_in_a_run_without_one_it_says_so() -> None:
    children, fig = explain_impl(LiveRun(SAMPLES / "faults"), 30)
    assert "no loss spike at or before step 30; the run's spikes: 61" in _text(children)
    assert fig.layout.meta["empty"]
    children, _ = explain_impl(LiveRun(SAMPLES / "healthy-moe"), 150)
    assert "no loss spike recorded in this run" in _text(children)
