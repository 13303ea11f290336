"""What every page's callbacks share: the run registry and a guard that turns errors into messages."""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs

from inspector.dash_app.runs import RunRef, RunRegistry

log = logging.getLogger("inspector.dash")


@dataclass
class AppContext:
    """The registry plus helpers for callbacks."""

    registry: RunRegistry

    def run_for(self, state: dict | None) -> RunRef:
        """The run a `run-state` store names (its message when it cannot be shown)."""
        if not state:
            return RunRef("", None, "loading…")
        if state.get("message"):
            return RunRef(state.get("key") or "", None, state["message"])
        return self.registry.get(state.get("key"))

    def with_run(self, fallback: Callable[[str], Any]) -> Callable:
        """Decorator for a callback whose first input is the `run-state` store: the function is
        called as `fn(run, *other_inputs)` with the open run; without one (loading, missing,
        corrupt) the callback returns `fallback(message)`. Errors are `guarded` the same way."""
        def wrap(fn: Callable) -> Callable:
            @guarded(fallback)
            @functools.wraps(fn)
            def inner(state: dict | None, *args: Any) -> Any:
                ref = self.run_for(state)
                return fallback(ref.message) if ref.run is None else fn(ref.run, *args)
            return inner
        return wrap


def run_key_from_search(search: str | None) -> str | None:
    """The `run` query parameter of a URL's search string (None when absent)."""
    if not isinstance(search, str):      # a crafted callback may send anything
        return None
    values = parse_qs(search.lstrip("?")).get("run")
    return values[0] if values else None


def selected_step(step_data: dict | None) -> int:
    """The step held by the global `step` store."""
    return int((step_data or {}).get("step", 0) or 0)


def guarded(fallback: Callable[[str], Any]) -> Callable:
    """Decorator: a callback that fails returns `fallback(message)` (figures saying what went wrong)
    instead of a stack trace in the page; the traceback goes to the server log."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                from dash.exceptions import PreventUpdate

                if isinstance(exc, PreventUpdate):
                    raise
                log.exception("dashboard callback %s failed", fn.__name__)
                return fallback(f"could not draw this panel: {type(exc).__name__}: {exc}")
        return inner
    return wrap
