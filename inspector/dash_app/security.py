"""Who may talk to the dashboard, and how much they may send: one policy for every route.

`install_guards(server, host=..., token=...)` adds, in this order, to every request (Dash's own
routes included: `/_dash-layout`, `/_dash-update-component`, `/_dash-component-suites/...`, assets):

1. Host (against DNS rebinding, where a page on attacker.example re-points its name at 127.0.0.1):
   the host name of the `Host` header must be a loopback address, `localhost`, or the name/address
   given with `--host`. When `--host` is a wildcard (0.0.0.0, ::) the dashboard is meant to be
   reached under names it cannot know, so with a token any Host is accepted (the token is the
   guard: a rebinding page cannot send it); without a token (only possible when `create_app` is
   called directly: `check_bind` refuses it) the machine's own hostname is added. Refused: 421.
   A request without a `Host` header (HTTP/1.0 tools, never a browser) is not checked.
2. Origin, on POST/PUT/PATCH/DELETE (Dash's callbacks are POSTs): absent is fine (curl, scripts);
   present, it must be http(s), its host name allowed as above and the same as the Host header's
   (and its port too, when the Host names one): the same origin. "null" and the rest: 403.
3. Body size: at most `MAX_BODY_BYTES` (the real dashboard's callbacks send under 1 KiB); more: 413.
4. Token (when one is configured): `Authorization: Bearer ...`, `?token=...` or the cookie, compared
   with `hmac.compare_digest`; anything else: 403. The cookie (HttpOnly, SameSite=Strict, Path=/)
   is set only on a successful response to a request whose `?token=` matched.
5. `?run=` keys are bounded (length, path components, printable) before anything resolves them: 400.
   (Their shape, `..` and the like, is judged by the run registry: the page then says why.)

Every refusal and every HTTP error is a one-line text/plain body.
"""
from __future__ import annotations

import hmac
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from dash.exceptions import DependencyException
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from inspector.dash_app.runs import key_bounds_problem, shown

COOKIE = "inspector_token"
MAX_BODY_BYTES = 1 << 20
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_REMEMBER = "inspector_remember_token"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """ValueError (one line) when `host` is not loopback and there is no token."""
    if not is_loopback(host) and not token:
        raise ValueError(f"refusing to serve on {host} without --token (anyone on the network could read "
                         f"your runs); pass --token SECRET or bind 127.0.0.1")


def normalize_host(name: str) -> str:
    """A host name for comparison: lower case, no brackets or trailing dot, IPs in canonical form."""
    name = name.strip().strip("[]").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6]:port` (a Host header) as (normalized name, port); None when malformed."""
    value = value.strip()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    elif value.count(":") > 1:
        return None
    else:
        name, _, port = value.partition(":")
    if not name or (port and not port.isdigit()) or len(port) > 5:
        return None
    return normalize_host(name), int(port) if port else None


@dataclass(frozen=True)
class HostPolicy:
    """The host names the dashboard answers to (any, with `any_host`); loopback ones always."""

    names: frozenset[str]
    any_host: bool = False

    def allows(self, name: str) -> bool:
        """True when the (normalized) host name `name` may be used to reach the dashboard."""
        return self.any_host or name in self.names or is_loopback(name)


def host_policy(bind: str, token: str | None) -> HostPolicy:
    """The policy for a server bound to `bind` (see the module docstring)."""
    bound = normalize_host(bind)
    names = frozenset({"localhost", "127.0.0.1", "::1"})
    if bound in WILDCARDS:
        if token:
            return HostPolicy(names, any_host=True)
        return HostPolicy(names | {normalize_host(socket.gethostname())})
    return HostPolicy(names | {bound})


def _refuse(status: int, text: str) -> Response:
    """A one-line text/plain error response."""
    line = " ".join(text.split())
    return Response(line + "\n", status=status, mimetype="text/plain")


def _check_host(policy: HostPolicy) -> Response | None:
    raw = request.environ.get("HTTP_HOST")
    if raw is None:
        return None
    parsed = split_host(raw)
    if parsed is None or not policy.allows(parsed[0]):
        return _refuse(421, f"421 misdirected request: this dashboard does not answer to host {shown(raw, 80)} "
                            f"(use http://127.0.0.1:PORT, or serve with --host NAME)")
    return None


def _origin_ok(origin: str, policy: HostPolicy) -> bool:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    name = normalize_host(parts.hostname)
    port = port or (443 if parts.scheme == "https" else 80)
    host = split_host(request.environ.get("HTTP_HOST") or "")
    if host is not None and (host[0] != name or (host[1] is not None and host[1] != port)):
        return False            # not the same origin as the page that was served
    return policy.allows(name)


def _check_origin(policy: HostPolicy) -> Response | None:
    origin = request.headers.get("Origin")
    if request.method not in UNSAFE_METHODS or origin is None or _origin_ok(origin, policy):
        return None
    return _refuse(403, f"403 forbidden: cross-origin request from {shown(origin, 80)} refused")


def _check_body() -> Response | None:
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        return _refuse(413, f"413 request body too large ({length:,} bytes; at most {MAX_BODY_BYTES:,})")
    return None


def _check_run_args() -> Response | None:
    for key in request.args.getlist("run"):
        problem = key_bounds_problem(key)
        if problem:
            return _refuse(400, f"400 bad request: {problem}")
    return None


def _presented(req) -> tuple[str | None, str]:
    """The token a request presents and where it came from ("bearer", "query", "cookie" or "")."""
    auth = req.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), "bearer"
    if "token" in req.args:
        return req.args.get("token"), "query"
    if COOKIE in req.cookies:
        return req.cookies.get(COOKIE), "cookie"
    return None, ""


def token_matches(given: str | None, expected: bytes) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected)


def install_token_guard(server: Flask, token: str) -> None:
    """Refuse (403) every request of `server` that does not present `token`; remember a right
    `?token=` in a cookie (HttpOnly, SameSite=Strict) on the successful response only."""
    expected = token.encode("utf-8", "replace")

    @server.before_request
    def _guard() -> Response | None:
        given, source = _presented(request)
        if not token_matches(given, expected):
            return _refuse(403, "403 forbidden: this dashboard needs its token (open the URL with ?token=...)")
        setattr(g, _REMEMBER, source == "query")
        return None

    @server.after_request
    def _remember(resp: Response) -> Response:
        if g.get(_REMEMBER) and resp.status_code < 400:
            resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        return resp


def install_error_pages(server: Flask) -> None:
    """HTTP errors (404, 405, 413, 500, ...) answer with one line of text, never an HTML page."""
    @server.errorhandler(HTTPException)
    def _one_line(exc: HTTPException):
        if exc.code is None or exc.code < 400:
            return exc
        first = (exc.description or "").strip().splitlines()[:1]
        return _refuse(exc.code, f"{exc.code} {exc.name.lower()}" + (f": {first[0]}" if first else ""))

    @server.errorhandler(DependencyException)
    def _no_such_file(_exc: DependencyException) -> Response:      # a bad /_dash-component-suites/ path
        return _refuse(404, "404 not found: no such component file")


def install_guards(server: Flask, *, host: str = "127.0.0.1", token: str | None = None) -> None:
    """Host, Origin, body size, token and run-key checks on every request of `server` (module docstring)."""
    policy = host_policy(host, token)
    server.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES      # also bounds bodies sent without a length

    @server.before_request
    def _where_from() -> Response | None:
        return _check_host(policy) or _check_origin(policy) or _check_body()

    if token:
        install_token_guard(server, token)
    server.before_request(_check_run_args)
    install_error_pages(server)
