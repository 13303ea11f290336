"""Running the dashboard with werkzeug: loopback by default, a token required anywhere else."""
from __future__ import annotations

import logging
import threading
import webbrowser
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from inspector.dash_app.security import check_bind


class OneLineErrorHandler(WSGIRequestHandler):
    """werkzeug's handler, with the errors it answers itself (414 URI too long, 431 headers too
    large, 400 malformed request line) as one line of text rather than an HTML page."""

    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"


def make_http_server(host: str, port: int, wsgi_app: Any) -> BaseWSGIServer:
    """A threaded werkzeug server for `wsgi_app` bound to host:port (port 0: a free one)."""
    return make_server(host, port, wsgi_app, threaded=True, request_handler=OneLineErrorHandler)


def start_server(root_or_run: str | Path, *, host: str = "127.0.0.1", port: int = 8050,
                 token: str | None = None) -> tuple[BaseWSGIServer, Any, str]:
    """Build the app and bind it (not yet serving): (server, app, URL). ValueError when the bind is unsafe."""
    from inspector.dash_app.app import create_app

    check_bind(host, token)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)     # no line per request on the console
    app = create_app(root_or_run, token=token, host=host)
    srv = make_http_server(host, port, app.server)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{srv.server_port}/" + (f"?token={token}" if token else "")
    return srv, app, url


def serve_in_thread(root_or_run: str | Path, **kwargs: Any) -> tuple[BaseWSGIServer, threading.Thread, str]:
    """Start serving on a daemon thread; stop with `server.shutdown()`."""
    srv, _app, url = start_server(root_or_run, **kwargs)
    thread = threading.Thread(target=srv.serve_forever, name="inspector-dash", daemon=True)
    thread.start()
    return srv, thread, url


def serve(root_or_run: str | Path, *, host: str = "127.0.0.1", port: int = 8050, token: str | None = None,
          open_browser: bool = False) -> None:
    """Serve until Ctrl-C, printing the URL first."""
    srv, app, url = start_server(root_or_run, host=host, port=port, token=token)
    print(f"inspector dashboard: {url}  (Ctrl-C to stop)", flush=True)
    if open_browser:
        webbrowser.open(url)
    try:
        srv.serve_forever()
    finally:
        srv.server_close()
        app.inspector_registry.close()
