"""Who may talk to the dashboard: loopback by default; anything else needs a token.

With a token, every request must carry it: `?token=...` once (a cookie is then set), the cookie,
or an `Authorization: Bearer ...` header; anything else gets 403.
"""
from __future__ import annotations

import hmac
import ipaddress

from flask import Flask, Response, request

COOKIE = "inspector_token"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """ValueError (one line) when `host` is not loopback and there is no token."""
    if not is_loopback(host) and not token:
        raise ValueError(f"refusing to serve on {host} without --token (anyone on the network could read "
                         f"your runs); pass --token SECRET or bind 127.0.0.1")


def _presented(req) -> str | None:
    auth = req.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return req.args.get("token") or req.cookies.get(COOKIE)


def install_token_guard(server: Flask, token: str) -> None:
    """Refuse (403) every request of `server` that does not present `token`."""
    expected = token.encode()

    @server.before_request
    def _guard():
        given = _presented(request)
        if given is None or not hmac.compare_digest(given.encode(), expected):
            return Response("403 forbidden: this dashboard needs its token (open the URL with ?token=...)\n",
                            status=403, mimetype="text/plain")
        return None

    @server.after_request
    def _remember(resp: Response) -> Response:
        if request.args.get("token"):
            resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return resp
