"""`AppContext.with_run`, the wrapper of every page callback, without a server or a browser."""
from __future__ import annotations

from pathlib import Path

from inspector.dash_app.context import AppContext
from inspector.dash_app.runs import RunRegistry
from tests.synthetic_run import SyntheticSpec, write_synthetic_run


def test_with_run_hands_over_the_open_run_or_the_reason_there_is_none(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path / "a", SyntheticSpec(steps=12, ranks=1))
    registry = RunRegistry(tmp_path, start=False)
    context = AppContext(registry)

    @context.with_run(lambda msg: ("fallback", msg))
    def last_loss_step(run, offset: int) -> tuple[str, int]:
        return "drawn", int(run.frame("scalar")["step"].max()) + offset

    try:
        assert last_loss_step({"key": "a"}, 1) == ("drawn", 12)  # last step 11, plus 1
        assert last_loss_step(None, 1) == ("fallback", "loading…")
        kind, message = last_loss_step({"key": "missing"}, 1)
        assert kind == "fallback" and "missing" in message
        kind, message = last_loss_step({"key": "a"}, "not a number")    # the callback raises
        assert kind == "fallback" and message.startswith("could not draw this panel: TypeError")
    finally:
        registry.close()


def test_run_key_from_search_ignores_what_is_not_a_query_string() -> None:
    from inspector.dash_app.context import run_key_from_search
    assert run_key_from_search("?run=a/b&x=1") == "a/b"
    assert run_key_from_search(None) is None
    assert run_key_from_search({"run": "x"}) is None       # a crafted callback body: no 500
    assert run_key_from_search(["?run=x"]) is None
