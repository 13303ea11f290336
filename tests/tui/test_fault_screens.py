"""TUI screens show the planted faults of sample_runs/faults (what was planted is read from the
run's `expected_findings`, not from the detectors): the Experts screen marks the starved expert
under its bar, the Run screen's grad-norm label names the clip threshold the loop used."""
from __future__ import annotations

import pytest
from textual.widgets import Static

from inspector.tui.app import InspectorApp
from inspector.views.live import LiveRun
from tests.conftest import ROOT
from tests.faults.findings import expected_findings
from tests.tui.conftest import FROZEN_NOW, wait_until

pytestmark = pytest.mark.anyio
FAULTS = ROOT / "sample_runs" / "faults"


async def test_experts_screen_marks_the_starved_expert() -> None:
    planted = next(e for e in expected_findings(LiveRun(FAULTS)) if e["check"] == "starved_expert")
    app = InspectorApp(FAULTS, frozen_now=FROZEN_NOW)
    async with app.run_test(size=(150, 40)) as pilot:
        await pilot.press("4")
        await wait_until(pilot, lambda: app.settled and app.screen.query("#experts-bars"))
        lines = str(app.screen.query_one("#experts-bars", Static).render()).splitlines()
        ruler = next(i for i, line in enumerate(lines) if line.split() == [str(e) for e in range(8)])
        marks = lines[ruler + 1]
        assert marks.strip() == "✖"
        assert marks.index("✖") == lines[ruler].index(str(planted["expert"]))    # under the expert's number
        assert lines[ruler + 2].startswith(f"✖ starved: expert {planted['expert']} (no token since step ")


async def test_grad_norm_label_names_the_clip_threshold() -> None:
    clip = LiveRun(FAULTS).meta.config["train"]["grad_clip"]
    app = InspectorApp(FAULTS, frozen_now=FROZEN_NOW)
    async with app.run_test(size=(150, 40)) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: app.settled and app.screen.query("#label-grad-norm"))
        first = str(app.screen.query_one("#label-grad-norm", Static).render()).splitlines()[0]
        assert first == f"grad norm · clip ≈ {clip:.3g}"
