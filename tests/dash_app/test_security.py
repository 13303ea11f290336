"""Security: loopback by default, a token required (and enforced) elsewhere, runs confined to the root."""
from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect

from inspector.dash_app.runs import RunRegistry
from inspector.dash_app.security import check_bind, is_loopback
from tests.conftest import inspector_cli
from tests.dash_app.conftest import dash_server
from tests.dash_app.helpers import wait_figure


def _status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_token_enforced_off_loopback(page, recorded_root):
    # Bound on all interfaces (not loopback), as `--host 0.0.0.0 --token s3cret` would be.
    with dash_server(recorded_root.root, token="s3cret", host="0.0.0.0") as server:
        url = server.url.replace("0.0.0.0", "127.0.0.1")
        assert _status(url + "/") == 403
        assert _status(url + "/_dash-layout") == 403
        assert _status(url + "/?token=wrong") == 403
        assert _status(url + "/_dash-layout", {"Authorization": "Bearer s3cret"}) == 200
        resp = page.goto(url + "/?run=a")
        assert resp.status == 403 and "needs its token" in page.content()
        resp = page.goto(url + "/?run=a&token=s3cret")
        assert resp.status == 200
        wait_figure(page, "ov-loss")                      # later requests ride on the cookie
        page.goto(url + "/gradients?run=a")                # no token in this URL: the cookie is enough
        wait_figure(page, "grad-norm")
        page.context.clear_cookies()
        assert page.goto(url + "/gradients?run=a").status == 403


def test_refuses_to_start_off_loopback_without_token(tmp_path):
    with pytest.raises(ValueError, match="--token"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "t")
    assert is_loopback("localhost") and is_loopback("::1") and not is_loopback("10.0.0.1")
    res = inspector_cli("dash", str(tmp_path), "--host", "0.0.0.0", "--port", "0", timeout=30)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "--token" in res.stderr


def test_replay_of_missing_run_is_one_line(tmp_path):
    res = inspector_cli("replay", str(tmp_path / "nope"), "--port", "0", timeout=30)
    assert res.returncode == 2 and res.stderr.startswith("inspector: error:") and "Traceback" not in res.stderr


def test_run_paths_stay_under_root(tmp_path):
    (tmp_path / "root" / "x").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "outside")
    reg = RunRegistry(tmp_path / "root", start=False)
    for bad in ("../outside", "/etc", "x/../../outside", "link", "link/sub"):
        with pytest.raises(ValueError):
            reg.resolve(bad)
        assert reg.get(bad).run is None and reg.get(bad).message
    assert reg.resolve("x") == (tmp_path / "root" / "x").resolve()
    reg.close()


def test_traversal_through_url_is_refused(page, recorded_root):
    with dash_server(recorded_root.root / "a") as server:
        page.goto(server.url + "/?run=../b")
        expect(page.locator("#run-message")).to_contain_text("outside the dashboard's root")
        fig = wait_figure(page, "ov-loss", "f => f && f.empty")
        assert "outside" in fig["empty"]
