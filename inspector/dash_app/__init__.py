"""The Dash web dashboard: live view of a run being written, and replay of finished runs.

Reads runs only through `inspector.views` (and the store's reader); never imports torch.
`create_app(root_or_run, token=None)` builds the app; `serve(...)` runs it with werkzeug.
"""
from inspector.dash_app.app import create_app
from inspector.dash_app.server import serve

__all__ = ["create_app", "serve"]
