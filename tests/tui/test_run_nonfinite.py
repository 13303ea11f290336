"""Run screen: a NaN step stays in the sparklines at its place and the labels name it, on a real
engine run with non-finite steps (tests/nonfinite_run.py); the loop's own losses are the oracle."""
from __future__ import annotations

import re

import numpy as np
import pytest
from textual.widgets import Sparkline, Static

from inspector.tui.app import InspectorApp
from tests.nonfinite_run import CLIP, LAST, POISONED, SKIPPED, write_nonfinite_run
from tests.tui.conftest import FROZEN_NOW, wait_until

pytestmark = pytest.mark.anyio
SIZE = (150, 40)


@pytest.fixture(scope="module")
def nf_run(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("tui-nonfinite") / "run"
    return path, write_nonfinite_run(path)


async def test_nan_steps_stay_on_the_sparklines_and_are_named(nf_run) -> None:
    path, rec = nf_run
    app = InspectorApp(path, frozen_now=FROZEN_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: app.settled)
        loss = list(app.screen.query_one("#spark-loss", Sparkline).data)
        assert len(loss) == LAST + 1                                 # one point per step, none dropped
        finite = np.isfinite(rec.loss)
        np.testing.assert_allclose(np.array(loss)[finite], rec.loss[finite], rtol=1e-6)
        top = rec.loss[finite].max()
        assert all(loss[s] == pytest.approx(top) for s in (SKIPPED, *range(POISONED, LAST + 1)))  # at the top edge
        label = app.screen.query_one("#label-loss", Static).render()
        text = str(label)
        assert f"✕ NaN at step {SKIPPED}, NaN at step {POISONED}, NaN at step {POISONED + 1} +3 more" in text
        # The value at the cursor says NaN, not N/A. The cursor is the run's newest record: step LAST, or
        # LAST + 1 when a system sample landed after the last step (on a busy machine).
        at = re.search(r"✕ NaN @ step (\d+)", text)
        assert at is not None and int(at.group(1)) in (LAST, LAST + 1), text
        assert any("red" in str(span.style) for span in label.spans)
        gnorm = list(app.screen.query_one("#spark-grad-norm", Sparkline).data)
        assert len(gnorm) == LAST + 1
        glabel = app.screen.query_one("#label-grad-norm", Static)
        lines = str(glabel.render()).splitlines()
        assert lines[0] == f"grad norm · clip ≈ {CLIP:.3g}"               # the inferred threshold, on view
        assert len(lines) <= glabel.size.height and any(f"✕ NaN at step {SKIPPED}" in x for x in lines)
