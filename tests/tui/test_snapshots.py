"""SVG snapshots of every screen (pytest-textual-snapshot) on a finished synthetic run.

The header clock is frozen (`frozen_now`) and the run's content is seeded, so the SVGs are stable.
Update after a deliberate change with `pytest tests/tui/test_snapshots.py --snapshot-update`.
"""
from __future__ import annotations

import pytest

from inspector.tui.app import InspectorApp
from tests.tui.conftest import FROZEN_NOW, wait_until

TERMINAL = (130, 38)


def app_for(path, screen: str) -> InspectorApp:
    """An app on `path` opened on `screen`, with a frozen clock."""
    return InspectorApp(path, screen=screen, frozen_now=FROZEN_NOW)


async def settled(pilot) -> None:
    """Wait until the screen shows the snapshot of the current request."""
    await wait_until(pilot, lambda: pilot.app.settled)
    await pilot.pause()


@pytest.mark.parametrize("screen", ["ranks", "run", "attention", "experts"])
def test_screen_snapshot(snap_compare, synthetic4, screen: str) -> None:
    path, _ = synthetic4
    assert snap_compare(app_for(path, screen), terminal_size=TERMINAL, run_before=settled)


def test_replay_cursor_snapshot(snap_compare, synthetic4) -> None:
    """The Run screen with the cursor moved back to the loss spike (replay)."""
    path, _ = synthetic4

    async def to_spike(pilot) -> None:
        await settled(pilot)
        await pilot.press("home", *["right"] * 40)
        await settled(pilot)

    assert snap_compare(app_for(path, "run"), terminal_size=TERMINAL, run_before=to_spike)


def test_help_snapshot(snap_compare, synthetic4) -> None:
    path, _ = synthetic4

    async def help_open(pilot) -> None:
        await settled(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(app_for(path, "ranks"), terminal_size=TERMINAL, run_before=help_open)
