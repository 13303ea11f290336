"""Browser fixtures: Debian's Chromium through plain sync Playwright, the dashboard on a werkzeug thread.

The Playwright fixture is module-scoped (not session): its asyncio loop on the main thread would
break asyncio tests that run later in the same process.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from playwright.sync_api import sync_playwright

from inspector.dash_app import create_app
from inspector.dash_app.server import make_http_server
from tests.synthetic_run import SyntheticSpec, write_synthetic_run

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    """Where screenshots go: $ARTIFACTS_DIR/dashboard or artifacts/dashboard under the repo root."""
    base = Path(os.environ["ARTIFACTS_DIR"]) if os.environ.get("ARTIFACTS_DIR") else ROOT / "artifacts"
    out = base / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def dash_server(root, token=None, host="127.0.0.1"):
    """The real app served by werkzeug on a free port, in a thread (`host` is both the bind address
    and what the app's Host check is configured with, as `inspector dash --host` does)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(root, token=token, host=host, poll_s=0.3)
    srv = make_http_server(host, 0, app.server)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f"http://{host}:{srv.server_port}", app=app, root=Path(root),
                              port=srv.server_port, host=host, token=token)
    finally:
        srv.shutdown()
        thread.join(5)
        app.inspector_registry.close()


@pytest.fixture(scope="module")
def pw_context():
    """One Chromium for the module, with a fresh profile."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000})
        yield ctx
        ctx.close()


@pytest.fixture
def page(pw_context):
    """A new tab; fails the test on any page error (uncaught exception in the browser)."""
    pg = pw_context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.errors = errors
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def recorded_root(tmp_path_factory):
    """A root with two finished synthetic runs (one with a slow rank) and what was written into them."""
    root = tmp_path_factory.mktemp("runs")
    written = write_synthetic_run(root / "a", SyntheticSpec(steps=60, ranks=2, slow_rank=1))
    write_synthetic_run(root / "b", SyntheticSpec(steps=40, ranks=1, seed=3, with_experts=False))
    return SimpleNamespace(root=root, written=written)


@pytest.fixture(scope="module")
def live_dash(recorded_root):
    """The dashboard over the recorded root."""
    with dash_server(recorded_root.root) as server:
        yield server
