"""Plain HTTP against a real dashboard server: token on every route, cookie rules, Host and Origin,
run keys in every parameter (traversal, symlinks, oversize) and body size.

Requests go through `http.client`, so the Host, Origin, Cookie and Authorization headers are exactly
what a test says. Routes come from `app.server.url_map`, so a route added later is covered too.
"""
from __future__ import annotations

import hmac
import http.client
import json
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, urlencode

import pytest

from inspector.dash_app import security
from inspector.dash_app.runs import RunRegistry
from inspector.dash_app.security import COOKIE, MAX_BODY_BYTES, host_policy, split_host
from inspector.store.recorder import Recorder
from tests.dash_app.conftest import dash_server
from tests.synthetic_run import SyntheticSpec, write_synthetic_run

TOKEN = "s3cret-" + uuid.uuid4().hex[:8]
SENTINEL = "SENTINEL-" + uuid.uuid4().hex
SLOW_S = 20.0          # generous: "answers at once" on a loaded machine, never a flaky timing bound
SAMPLE_ARGS = {"path": "overview", "filename": "inspector.css", "package_name": "dash",
               "fingerprinted_path": "dash-renderer/build/dash_renderer.min.js"}


@dataclass
class Reply:
    """One HTTP answer."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes
    seconds: float

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []


def call(server, method: str, path: str, *, body: bytes | None = None, headers: dict | None = None,
         host: str | None = None) -> Reply:
    """One request on a fresh connection; `host` replaces the Host header (default 127.0.0.1:PORT)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    hdrs = {"Host": host if host is not None else f"127.0.0.1:{server.port}", **(headers or {})}
    start = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, resp.headers, data, time.monotonic() - start)
    finally:
        conn.close()


def one_line(reply: Reply) -> bool:
    """True when the body is one line of text."""
    return reply.text.count("\n") <= 1 and "<" not in reply.text


def route_requests(app) -> list[tuple[str, str]]:
    """(method, path) for every rule of the Flask server, with sample values for its arguments."""
    out = []
    for rule in app.server.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: quote(SAMPLE_ARGS.get(m.group(1), "x")), rule.rule)
        out += [(method, path) for method in sorted(rule.methods - {"HEAD"})]
    return out


def page_resources(server) -> list[str]:
    """The scripts and stylesheets the index page loads (Dash's component suites, assets)."""
    html = call(server, "GET", "/", headers=bearer(TOKEN) if server.token else {}).text
    urls = re.findall(r'(?:src|href)="(/[^"]+)"', html)
    return sorted({u for u in urls if u.startswith(("/_dash-component-suites/", "/assets/", "/_favicon"))})


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def with_query(path: str, **params: str) -> str:
    return path + ("&" if "?" in path else "?") + urlencode(params)


# ---- Dash callbacks over plain HTTP ---------------------------------------------------------------

def _ids(output: str) -> list[dict]:
    parts = output[2:-2].split("...") if output.startswith("..") else [output]
    return [dict(zip(("id", "property"), p.rsplit(".", 1))) for p in parts]


def callback_body(dep: dict, values: dict) -> dict | None:
    """A /_dash-update-component body for dependency `dep`, inputs/state taken from `values`
    ("id.property" -> value, None otherwise); None for clientside or pattern-matching callbacks."""
    items = dep["inputs"] + dep["state"]
    if dep.get("clientside_function") or "{" in dep["output"] or any(not isinstance(i["id"], str) for i in items):
        return None
    def fill(item: dict) -> dict:
        return {**item, "value": values.get(f"{item['id']}.{item['property']}")}

    outputs = _ids(dep["output"])
    return {"output": dep["output"], "outputs": outputs if dep["output"].startswith("..") else outputs[0],
            "inputs": [fill(i) for i in dep["inputs"]], "state": [fill(s) for s in dep["state"]],
            "changedPropIds": [f"{dep['inputs'][0]['id']}.{dep['inputs'][0]['property']}"]}


def key_values(key) -> dict:
    """Every callback input that names a run, set to `key`."""
    return {"url.search": "?" + urlencode({"run": key}) if isinstance(key, str) else key,
            "url.pathname": "/", "run-select.value": key, "cmp-runs.value": [key], "step.data": {"step": 0},
            "run-state.data": {"key": key, "message": None, "version": 1, "last_step": 1, "status": "live"}}


def post_callback(server, body: dict, headers: dict | None = None) -> Reply:
    hdrs = {"Content-Type": "application/json", **(bearer(TOKEN) if server.token else {}), **(headers or {})}
    return call(server, "POST", "/_dash-update-component", body=json.dumps(body).encode(), headers=hdrs)


def dependencies(server) -> list[dict]:
    reply = call(server, "GET", "/_dash-dependencies", headers=bearer(TOKEN) if server.token else {})
    assert reply.status == 200
    return json.loads(reply.body)


def run_state_body(server, key) -> dict:
    dep = next(d for d in dependencies(server) if "run-state.data" in d["output"] and not d.get("clientside_function"))
    return callback_body(dep, {**key_values(key), "run-state.data": None})     # as a first page load sends


def run_state(server, key) -> tuple[Reply, dict]:
    """The `run_state` callback for `key`: the reply and the run-state data it set."""
    reply = post_callback(server, run_state_body(server, key))
    assert reply.status == 200, reply.text[:300]
    return reply, json.loads(reply.body)["response"]["run-state"]["data"]


# ---- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/ with run `a`, `alias` -> a (inside), `escape` -> a run outside, `mixed` whose
    rank-00001 leads outside, `secret-link` -> a file outside; outside/ holds the sentinels."""
    base = tmp_path_factory.mktemp("httpsec")
    root, outside = base / "root", base / "outside"
    write_synthetic_run(root / "a", SyntheticSpec(steps=12, spike_step=None, with_attention=False))
    write_synthetic_run(root / "mixed", SyntheticSpec(steps=12, spike_step=None, with_attention=False))
    with Recorder(outside / "run", rank=0, world_size=1, name=SENTINEL) as rec:
        for step in range(5):
            rec.scalars({"loss": 1.0, SENTINEL: 2.0}, step=step)
    (outside / "secret.txt").write_text(SENTINEL + "\n")
    (root / "alias").symlink_to(root / "a")
    (root / "escape").symlink_to(outside / "run")
    (root / "mixed" / "rank-00001").symlink_to(outside / "run" / "rank-00000")
    (root / "secret-link").symlink_to(outside / "secret.txt")
    return SimpleNamespace(root=root, outside=outside)


@pytest.fixture(scope="module")
def plain(tree):
    """No token, loopback: the default `inspector dash`."""
    with dash_server(tree.root) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(tree):
    """With a token, on loopback."""
    with dash_server(tree.root, token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def wildcard(tree):
    """With a token on every interface, as `--host 0.0.0.0 --token ...`."""
    with dash_server(tree.root, token=TOKEN, host="0.0.0.0") as server:
        yield server


# ---- token --------------------------------------------------------------------------------------

def _wrong_credentials() -> list[tuple[str, dict]]:
    return [("", {}), ("wrong", {}), (TOKEN + "x", {}), ("", bearer("wrong")), ("", {"Cookie": f"{COOKIE}=wrong"}),
            ("", {"Cookie": f"{COOKIE}={TOKEN[:-1]}"}), ("é", {}), ("", {"Authorization": f"Basic {TOKEN}"})]


def test_every_route_refuses_missing_and_wrong_tokens(guarded):
    targets = route_requests(guarded.app) + [("GET", u) for u in page_resources(guarded)]
    assert {"/_dash-layout", "/_dash-dependencies", "/_dash-update-component", "/_favicon.ico",
            "/_reload-hash"} <= {p for _, p in targets}
    assert any(p.startswith("/_dash-component-suites/") for _, p in targets)
    assert any(p.startswith("/assets/") for _, p in targets)
    for method, path in targets:
        for query, headers in _wrong_credentials():
            url = with_query(path, token=query) if query else path
            body = b"{}" if method == "POST" else None
            reply = call(guarded, method, url, body=body, headers=headers)
            assert reply.status == 403, (method, url, headers, reply.status)
            assert one_line(reply) and "needs its token" in reply.text
            assert reply.cookies() == [] and TOKEN not in reply.text


def test_every_route_accepts_the_right_token(guarded):
    body = json.dumps(run_state_body(guarded, "a")).encode()
    for method, path in route_requests(guarded.app):
        reply = call(guarded, method, path, body=body if method == "POST" else None,
                     headers={**bearer(TOKEN), "Content-Type": "application/json"})
        assert reply.status not in (403, 421) and reply.status < 500, (method, path, reply.status, reply.text[:200])
    for path in page_resources(guarded):
        assert call(guarded, "GET", path, headers={"Cookie": f"{COOKIE}={TOKEN}"}).status == 200, path


def test_wrong_query_token_never_gets_the_cookie(guarded):
    reply = call(guarded, "GET", "/?token=x")
    assert reply.status == 403 and reply.cookies() == [] and TOKEN not in str(reply.headers)


def test_cookie_only_after_a_right_query_token(guarded):
    reply = call(guarded, "GET", with_query("/", token=TOKEN))
    assert reply.status == 200
    [cookie] = reply.cookies()
    attrs = [a.strip().lower() for a in cookie.split(";")]
    assert cookie.startswith(f"{COOKIE}={TOKEN};")
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/" in attrs
    # the cookie then works alone; a wrong cookie does not
    assert call(guarded, "GET", "/_dash-layout", headers={"Cookie": f"{COOKIE}={TOKEN}"}).status == 200
    assert call(guarded, "GET", "/_dash-layout", headers={"Cookie": f"{COOKIE}=nope"}).status == 403
    # no cookie without a query token, and none on an error response even with the right one
    assert call(guarded, "GET", "/_dash-layout", headers=bearer(TOKEN)).cookies() == []
    missing = call(guarded, "GET", with_query("/_dash-component-suites/dash/nope.js", token=TOKEN))
    assert missing.status == 404 and missing.cookies() == [] and one_line(missing)
    bad_key = call(guarded, "GET", with_query("/", token=TOKEN, run="a" * 5000))
    assert bad_key.status == 400 and bad_key.cookies() == []


def test_token_compare_is_constant_time(guarded, monkeypatch):
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    assert call(guarded, "GET", "/_dash-layout?token=guess").status == 403
    assert call(guarded, "GET", "/_dash-layout", headers=bearer(TOKEN)).status == 200
    assert (b"guess", TOKEN.encode()) in seen and (TOKEN.encode(), TOKEN.encode()) in seen


# ---- Host and Origin ------------------------------------------------------------------------------

FOREIGN_HOSTS = ["attacker.example:{port}", "attacker.example", "localhost.attacker.example:{port}",
                 "127.0.0.1.nip.io:{port}", "10.0.0.7:{port}", "[::1", "a:b:c", "127.0.0.1:{port}@evil"]
LOOPBACK_HOSTS = ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}", "127.0.0.1"]


def test_foreign_host_is_refused(plain):
    body = json.dumps(run_state_body(plain, "a")).encode()
    for template in FOREIGN_HOSTS:
        host = template.format(port=plain.port)
        for method, path in [("GET", "/"), ("GET", "/_dash-layout"), ("GET", "/_dash-dependencies"),
                             ("POST", "/_dash-update-component")]:
            origin = {"Origin": f"http://{host}", "Content-Type": "application/json"} if method == "POST" else {}
            reply = call(plain, method, path, body=body if method == "POST" else None, headers=origin, host=host)
            assert reply.status == 421, (host, path, reply.status)
            assert one_line(reply) and "run-state" not in reply.text and "synthetic" not in reply.text


def test_loopback_hosts_are_served(plain):
    for template in LOOPBACK_HOSTS:
        host = template.format(port=plain.port)
        reply = call(plain, "GET", "/_dash-layout", host=host)
        assert reply.status == 200 and b"step-slider" in reply.body, host


def test_foreign_origin_is_refused_on_post(plain):
    body = run_state_body(plain, "a")
    port = plain.port
    for origin in [f"http://attacker.example:{port}", "null", f"http://127.0.0.1:{port + 1}", "file://",
                   f"http://localhost:{port}", f"ftp://127.0.0.1:{port}", "http://127.0.0.1:99999",
                   "http://127.0.0.1", f"https://127.0.0.1:{port}.evil"]:
        reply = post_callback(plain, body, {"Origin": origin})
        assert reply.status == 403 and one_line(reply) and "synthetic" not in reply.text, origin
    assert post_callback(plain, body).status == 200                                   # no Origin: curl, tests
    assert post_callback(plain, body, {"Origin": f"http://127.0.0.1:{port}"}).status == 200
    reply = call(plain, "POST", "/_dash-update-component", body=json.dumps(body).encode(), host=f"localhost:{port}",
                 headers={"Origin": f"http://localhost:{port}", "Content-Type": "application/json"})
    assert reply.status == 200


def test_wildcard_bind_with_token_accepts_any_host_but_not_foreign_origins(wildcard):
    body = run_state_body(wildcard, "a")
    assert call(wildcard, "GET", "/_dash-layout", host=f"gpu-node-7:{wildcard.port}").status == 403
    assert call(wildcard, "GET", "/_dash-layout", host=f"gpu-node-7:{wildcard.port}",
                headers=bearer(TOKEN)).status == 200
    reply = call(wildcard, "POST", "/_dash-update-component", body=json.dumps(body).encode(),
                 host=f"gpu-node-7:{wildcard.port}",
                 headers={**bearer(TOKEN), "Origin": "http://attacker.example", "Content-Type": "application/json"})
    assert reply.status == 403


def test_host_policy():
    loop = host_policy("127.0.0.1", None)
    assert all(loop.allows(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(loop.allows(h) for h in ("attacker.example", "localhost.attacker.example", "10.0.0.1"))
    named = host_policy("10.1.2.3", "t")
    assert named.allows("10.1.2.3") and not named.allows("node7") and not named.any_host
    assert host_policy("0.0.0.0", "t").any_host and host_policy("::", "t").any_host
    assert not host_policy("0.0.0.0", None).any_host
    assert split_host("[::1]:8050") == ("::1", 8050) and split_host("LocalHost.:80") == ("localhost", 80)
    assert split_host("[::1") is None and split_host("a:b:c") is None and split_host("h:x") is None


# ---- run keys: traversal, symlinks, oversize -------------------------------------------------------

def traversal_keys(tree) -> list[str]:
    return ["../outside/run", "../../etc", "a/../../outside/run", "./../outside/run", " ../outside/run",
            "%2e%2e/outside/run", "..%2Foutside%2Frun", "..\\outside\\run", "a\\..\\..\\outside\\run",
            "/etc", "/etc/passwd", str(tree.outside / "run"), str(tree.outside / "secret.txt"), "C:\\Windows",
            "a\x00/../../outside/run", "\x00", "a\n../outside", "\u2028../outside/run", "escape",
            "escape/rank-00000", "mixed", "mixed/rank-00001", "secret-link", "a/../escape", "//etc"]


def test_traversal_in_every_parameter_never_leaks(plain, tree):
    deps = dependencies(plain)
    secret = (tree.outside / "secret.txt").read_text().strip()
    for key in traversal_keys(tree):
        replies = [call(plain, "GET", with_query(p, run=key)) for p in ("/", "/attention", "/compare")]
        for dep in deps:
            body = callback_body(dep, key_values(key))
            if body is not None:
                replies.append(post_callback(plain, body))
        for reply in replies:
            assert reply.status < 500, (key, reply.status, reply.text[:300])
            assert SENTINEL not in reply.text and secret not in reply.text, key
        _, state = run_state(plain, key)
        assert state["status"] == "none" and state["message"].count("\n") == 0, (key, state)


def test_traversal_in_raw_urls_never_leaks(plain, tree):
    secret = (tree.outside / "secret.txt").read_text().strip()
    paths = ["/?run=%2e%2e%2foutside%2frun", "/?run=%252e%252e%252foutside", "/?run=..%5coutside",
             "/assets/..%2f..%2f..%2foutside/secret.txt", "/assets/../../outside/secret.txt",
             "/_dash-component-suites/dash/..%2f..%2f..%2f..%2fetc%2fpasswd", "/static/..%2f..%2fsecret.txt",
             "/secret-link", "/assets/%2e%2e/%2e%2e/secret.txt", "/..%2f..%2foutside%2fsecret.txt"]
    for path in paths:
        reply = call(plain, "GET", path)
        assert reply.status < 500 and SENTINEL not in reply.text and secret not in reply.text, path


def test_symlinks_out_of_the_root_are_not_followed(plain, tree):
    _, escape = run_state(plain, "escape")
    assert "outside the dashboard's root" in escape["message"]
    _, mixed = run_state(plain, "mixed")
    assert "rank-00001" in mixed["message"] and "symlink outside" in mixed["message"]
    _, alias = run_state(plain, "alias")                       # a symlink that stays inside is fine
    assert alias["status"] != "none" and alias["message"] is None
    reg = RunRegistry(tree.root, start=False)
    try:
        assert reg.get("mixed").run is None and reg.get("escape").run is None and reg.get("a").run is not None
    finally:
        reg.close()


@pytest.mark.parametrize("key", ["a" * 5000, "a/" * 40, "a/" * 150_000, "x" * 1_000_000],
                         ids=["5000-chars", "40-parts", "150k-parts", "1M-chars"])
def test_oversized_keys_in_callbacks_answer_with_a_message(plain, key):
    reply, state = run_state(plain, key)
    assert reply.seconds < SLOW_S
    assert state["status"] == "none" and ("too long" in state["message"] or "components" in state["message"])
    assert len(state["message"]) < 300
    for dep in dependencies(plain):
        body = callback_body(dep, key_values(key))
        if body is not None:
            other = post_callback(plain, body)            # 413: the key twice over is past the body cap
            assert other.status in (200, 204, 413) and other.seconds < SLOW_S, (dep["output"], other.status)


@pytest.mark.parametrize("size", [5000, 64_000, 1 << 20])
def test_oversized_keys_in_urls_are_4xx(plain, size):
    reply = call(plain, "GET", "/?" + urlencode({"run": "a" * size}))
    assert 400 <= reply.status < 500 and one_line(reply) and reply.seconds < SLOW_S
    deep = call(plain, "GET", "/?" + urlencode({"run": "a/" * (size // 2)}))
    assert 400 <= deep.status < 500 and one_line(deep)


def test_oversized_body_is_413_and_the_server_lives(plain):
    for size in (MAX_BODY_BYTES + 1, 8 << 20):
        reply = call(plain, "POST", "/_dash-update-component", body=b"{" + b" " * (size - 2) + b"}",
                     headers={"Content-Type": "application/json"})
        assert reply.status == 413 and one_line(reply)
    _, state = run_state(plain, "a")
    assert state["status"] != "none"


def test_bad_requests_are_one_line_errors(plain):
    for method, path, body in [("GET", "/_dash-component-suites/dash/nope.js", None),
                               ("GET", "/_dash-component-suites/nopkg/x.js", None),
                               ("POST", "/_dash-update-component", b"{"), ("POST", "/_dash-layout", b"{}"),
                               ("GET", "/?run=%00", None)]:
        reply = call(plain, method, path, body=body, headers={"Content-Type": "application/json"})
        assert 400 <= reply.status < 500 and one_line(reply), (path, reply.status, reply.text[:200])


def test_registry_bounds_keys_before_resolving(tmp_path, monkeypatch):
    reg = RunRegistry(tmp_path, start=False)
    calls = []
    monkeypatch.setattr(Path, "resolve", lambda self, *a, **k: calls.append(self) or self)
    for key in ["a/" * 64_000, "x" * (8 << 20), "a\x00b", "../x", "/etc", "a\\b", 42, ["a"]]:
        with pytest.raises(ValueError):
            reg.resolve(key)
        ref = reg.get(key)
        assert ref.run is None and ref.message.count("\n") == 0 and len(ref.message) < 300
    assert calls == []
    reg.close()


def test_cli_server_checks_host_and_body(tree):
    """`inspector dash` as a real process: the same guards are wired in through serve()."""
    exe = Path(sys.executable).with_name("inspector")
    proc = subprocess.Popen([str(exe), "dash", str(tree.root), "--port", "0", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", proc.stdout.readline())
        assert match
        server = SimpleNamespace(port=int(match.group(1)), token=None)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert call(server, "GET", "/_dash-layout").status == 200
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert call(server, "GET", "/_dash-layout", host="attacker.example").status == 421
        assert call(server, "POST", "/_dash-update-component", body=b" " * (MAX_BODY_BYTES + 1)).status == 413
    finally:
        proc.terminate()
        proc.wait(10)


def test_compare_opens_only_listed_runs_once_each(plain, monkeypatch):
    from inspector.dash_app.runs import RunRegistry

    asked = []
    real_get = RunRegistry.get
    monkeypatch.setattr(RunRegistry, "get", lambda self, key: (asked.append(key), real_get(self, key))[1])
    dep = next(d for d in dependencies(plain) if "cmp-" in d["output"] and "cmp-runs.value" in
               [f"{i['id']}.{i['property']}" for i in d["inputs"]] and "figure" in d["output"])
    chosen = ["a"] * 1000 + [f"nope-{i}" for i in range(5000)] + [None, 7, {"x": 1}, ["a"], "../outside"]
    reply = post_callback(plain, callback_body(dep, {**key_values("a"), "cmp-runs.value": chosen}))
    assert reply.status == 200, reply.text[:300]
    assert asked == ["a"], (asked, reply.text[:300])   # not 6,005 lookups, nothing outside the listing
