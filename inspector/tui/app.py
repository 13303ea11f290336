"""The Inspector's Textual app: screens per view, a polling thread worker, a shared step cursor.

The worker (`_poll_loop`) owns all disk access: it tails the run and builds a Snapshot of what the
current screen draws, handing it over with `call_from_thread`. The UI applies at most 4 snapshots a
second (`set_interval`), so rendering never waits on disk and never floods the terminal. The first
snapshot is the run's roll call (`first_frame`): drawn before the worker imports pandas and the
reader, so a 1,024-rank job shows its ranks as fast as a bare Textual app starts.
"""
from __future__ import annotations

import functools
import importlib
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.worker import get_current_worker

from inspector.tui.screens.base import InspectorScreen
from inspector.tui.screens.ranks import RanksScreen
from inspector.tui.first_frame import first_snapshot, start_roll_call
from inspector.tui.state import SCREENS, Request, Snapshot

REFRESH_S = 0.25
"""Minimum time between two redraws (4 Hz)."""
EXTRA_SCREENS = ("hang",)
"""Screens without a number key (the hang view opens with `h` from the Ranks screen)."""
SCREEN_CLASSES = {"run": ("inspector.tui.screens.run", "RunScreen"),
                  "attention": ("inspector.tui.screens.attention", "AttentionScreen"),
                  "experts": ("inspector.tui.screens.experts", "ExpertsScreen"),
                  "inference": ("inspector.tui.screens.inference", "InferenceScreen"),
                  "hang": ("inspector.tui.screens.hang", "HangScreen")}
"""Screens other than Ranks (the first one shown), imported when first opened: numpy and their
widgets stay off the path to the first frame."""
FIRST_FRAME_WAIT_S = 2.0
"""How long the worker waits for the roll call to be on screen before it loads the reader (its
imports hold the interpreter lock for a good part of a second, and would slow that first frame)."""


def _new_screen(name: str) -> InspectorScreen:
    """A new screen `name` of `SCREEN_CLASSES` (its module imported on first use)."""
    module, cls = SCREEN_CLASSES[name]
    return getattr(importlib.import_module(module), cls)()


class InspectorApp(App):
    """Live monitor and replay of one run directory.

    `interval`: seconds between disk polls of a live run. `frozen_now`: a fixed clock for the header
    (snapshot tests), which also hides the elapsed time. `on_first_frame`: called once after the
    first snapshot with data has been drawn (benchmarks).
    """

    CSS_PATH = "app.tcss"
    TITLE = "DeepSeek Inspector"
    MODES = {"ranks": RanksScreen, **{name: functools.partial(_new_screen, name) for name in SCREEN_CLASSES}}
    DEFAULT_MODE = "ranks"
    BINDINGS = [
        Binding("1", "screen('ranks')", "Ranks"), Binding("2", "screen('run')", "Run"),
        Binding("3", "screen('attention')", "Attention"), Binding("4", "screen('experts')", "Experts"),
        Binding("5", "screen('inference')", "Inference"),
        Binding("left", "move(-1)", "Step", key_display="←→", priority=True),
        Binding("right", "move(1)", "Step+", show=False, priority=True),
        Binding("left_square_bracket", "move(-100)", "-100", show=False, priority=True),
        Binding("right_square_bracket", "move(100)", "+100", show=False, priority=True),
        Binding("home", "first", "First", show=False, priority=True),
        Binding("end", "last", "Newest", show=False, priority=True),
        Binding("space", "play", "Play", priority=True),
        Binding("question_mark", "help", "Help"), Binding("q", "quit", "Quit"),
    ]

    def __init__(self, path: str | Path, *, interval: float = 0.5, screen: str = "ranks",
                 frozen_now: float | None = None, on_first_frame: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self._interval = interval
        self._frozen_now = frozen_now
        self.request = Request(screen=screen if screen in SCREENS + EXTRA_SCREENS else "ranks")
        self.snapshot: Snapshot | None = None
        self.playing = False
        self._pending: Snapshot | None = None
        self._last_draw = 0.0
        self._wake = threading.Event()
        self._first_drawn = threading.Event()
        self._roll_call = start_roll_call(str(self.path))
        self._on_first_frame = on_first_frame
        self._idle_wait = min(interval, 0.5)
        self.draws = 0
        self.plugin_modes: set[str] = set()
        self.plugin_keys: list[tuple[str, str]] = []  # (key, title) of each plugin screen given a key

    def on_mount(self) -> None:
        """Start on the requested screen, start the poller and the 4 Hz redraw timer."""
        if self.request.screen != self.DEFAULT_MODE:
            self.switch_mode(self.request.screen)
        self.set_interval(REFRESH_S, self._tick)
        self._poll_loop()

    @work(thread=True, exclusive=True, name="poller", exit_on_error=False)
    def _poll_loop(self) -> None:
        worker = get_current_worker()
        first = first_snapshot(self._roll_call.result(), self.request, frozen_now=self._frozen_now)
        if first is not None and not worker.is_cancelled:
            try:
                self.call_from_thread(self._receive, first)
            except RuntimeError:  # the app has shut down
                return
            self._first_drawn.wait(FIRST_FRAME_WAIT_S)
        from inspector.plugins import load_plugins
        from inspector.tui.poller import Poller   # pandas and the reader load here, after the first frame

        screens = [(s.name, s.title, s.key) for s in load_plugins().tui_screens]
        if screens:
            self.call_from_thread(self._add_plugin_screens, screens)
        poller = Poller(self.path, interval=self._interval, frozen_now=self._frozen_now)
        while not worker.is_cancelled:
            try:
                snap = poller.tick(self.request)
            except Exception as exc:  # never a traceback on the terminal
                snap = Snapshot(request=self.request, error=f"poller failed: {type(exc).__name__}: {exc}")
                time.sleep(1.0)
            if snap is not None and not worker.is_cancelled:
                try:
                    self.call_from_thread(self._receive, snap)
                except RuntimeError:  # the app has shut down
                    return
                except Exception:  # a drawing error must not stop the polling
                    pass
            self._wake.wait(self._idle_wait)
            self._wake.clear()
        poller.close()

    def _add_plugin_screens(self, screens: list[tuple[str, str, str]]) -> None:
        """Give each plugin screen a mode and a key (keys the app already uses are not taken)."""
        from inspector.tui.screens.plugin import PluginScreen, plugin_mode
        taken = {b.key for b in self.BINDINGS if isinstance(b, Binding)}
        for name, title, key in screens:
            mode = plugin_mode(name)
            self.add_mode(mode, lambda name=name, title=title: PluginScreen(name, title))
            self.plugin_modes.add(mode)
            if key not in taken:
                self.bind(key, f"screen('{mode}')", description=title)
                self.plugin_keys.append((key, title))
                taken.add(key)
        self.refresh_bindings()

    def _receive(self, snap: Snapshot) -> None:
        self._pending = snap
        if time.monotonic() - self._last_draw >= REFRESH_S:
            self._apply()

    def _tick(self) -> None:
        if self.playing:
            self._advance_play()
        if self._pending is not None:
            self._apply()

    def _apply(self) -> None:
        snap, self._pending = self._pending, None
        if snap is None:
            return
        self.snapshot = snap
        self._last_draw = time.monotonic()
        self.draws += 1
        self._show(snap)
        if not self._first_drawn.is_set():
            self.call_after_refresh(self._first_drawn.set)
        if self._on_first_frame is not None and (snap.payload is not None or snap.error or snap.problem):
            callback, self._on_first_frame = self._on_first_frame, None
            self.call_after_refresh(callback)

    def _show(self, snap: Snapshot) -> None:
        screen = self.screen
        if isinstance(screen, InspectorScreen) and screen.ready:
            screen.show(snap)

    @property
    def settled(self) -> bool:
        """True when the screen shows a snapshot built for the current request (tests, benchmarks)."""
        snap, screen = self.snapshot, self.screen
        return (snap is not None and not snap.partial and self._pending is None and snap.request == self.request
                and isinstance(screen, InspectorScreen) and screen.shown_serial == snap.serial)

    def update_request(self, **changes: Any) -> None:
        """Change what the poller builds (screen, cursor, rank, layer, head) and wake it."""
        self.request = replace(self.request, **changes)
        self._wake.set()

    def set_cursor(self, step: int | None) -> None:
        """Move the step cursor (None: follow the newest step), clamped to the recorded steps."""
        last = self.snapshot.last_step if self.snapshot is not None else -1
        if step is not None:
            step = max(0, min(step, max(last, 0)))
        self.update_request(cursor=step)

    def select_rank(self, rank: int) -> None:
        """Show `rank` on the per-rank screens."""
        self.update_request(rank=rank)

    def _current_step(self) -> int:
        snap = self.snapshot
        if snap is None:
            return 0
        return snap.cursor_step if self.request.cursor is None else self.request.cursor

    def action_screen(self, name: str) -> None:
        """Show screen `name`."""
        if (name in SCREENS or name in EXTRA_SCREENS or name in self.plugin_modes) and name != self.current_mode:
            self.switch_mode(name)
            self.update_request(screen=name)

    def action_move(self, delta: int) -> None:
        """Step cursor ± delta."""
        self.set_cursor(self._current_step() + delta)

    def action_first(self) -> None:
        """Cursor to the first step."""
        self.set_cursor(0)

    def action_last(self) -> None:
        """Cursor to the newest step, following a live run."""
        self.playing = False
        self.update_request(cursor=None)

    def action_play(self) -> None:
        """Play or pause the replay (from the first step when at the end)."""
        self.playing = not self.playing
        snap = self.snapshot
        if self.playing and snap is not None and self.request.cursor in (None, snap.last_step):
            self.set_cursor(0)
        if snap is not None:
            self._show(snap)

    def _advance_play(self) -> None:
        snap = self.snapshot
        if snap is None or snap.last_step <= 0:
            self.playing = False
            return
        stride = max(1, snap.last_step // 200)
        nxt = self._current_step() + stride
        if nxt >= snap.last_step:
            self.playing = False
            nxt = snap.last_step
        self.set_cursor(nxt)

    def action_help(self) -> None:
        """Show the key reference."""
        from inspector.tui.screens.help import HelpScreen

        self.push_screen(HelpScreen(self.plugin_keys))

    def on_unmount(self) -> None:
        """Stop the poller thread."""
        self._wake.set()
        self._first_drawn.set()
        for worker in self.workers:
            worker.cancel()


def run_tui(path: str | Path, *, interval: float = 0.5, screen: str = "ranks") -> int:
    """Run the terminal UI on `path` until the user quits; returns the exit status."""
    app = InspectorApp(path, interval=interval, screen=screen)
    app.run()
    return app.return_code or 0
