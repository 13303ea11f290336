"""The Dash app: chrome, URL router, run state, global step control; pages register the rest.

`create_app(root_or_run, token=None, host="127.0.0.1")` serves one run or every run under a
directory; `host` is the address the server binds (it decides which Host headers are accepted, see
`security`). Pages are routed by URL path (`/`, `/attention`, ...) and the run by `?run=<path under the root>`.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import dash
from dash import ALL, Input, Output, State, html, no_update

from inspector.dash_app import components
from inspector.dash_app.context import AppContext, run_key_from_search
from inspector.dash_app.pages import PAGE_MODULES
from inspector.dash_app.runs import RunRegistry
from inspector.dash_app.security import install_guards
from inspector.views.live import TABULAR_KINDS
from inspector.views.overview import run_header
from inspector.views.ranks import rank_status_counts

ASSETS = Path(__file__).parent / "assets"

STEP_CONTROL_JS = """
function(state, slider, m10, m1, p1, p10, play, gotos, follow, current) {
  const nu = window.dash_clientside.no_update;
  const trig = (window.dash_clientside.callback_context.triggered || [])[0];
  const prop = trig ? trig.prop_id : '';
  const id = prop.slice(0, prop.lastIndexOf('.'));
  const last = Math.max(parseInt((state || {}).last_step || 0), 0);
  let step = parseInt((current || {}).step || 0);
  let following = !!(follow && follow.length);
  const deltas = {'step-m10': -10, 'step-m1': -1, 'step-p1': 1, 'step-p10': 10};
  // Quick clicks can reach this function as one call (Dash merges pending runs of a callback), so
  // each button moves the step by its clicks since the last call, not by one click per call.
  const clicks = {'step-m10': m10 || 0, 'step-m1': m1 || 0, 'step-p1': p1 || 0, 'step-p10': p10 || 0};
  const seen = (current || {}).clicks || {};
  let moved = 0;
  for (const b in deltas) {
    const n = clicks[b] - (seen[b] || 0);
    if (n > 0) moved += n * deltas[b];
  }
  if (id.startsWith('{')) {
    if (!trig.value) return [nu, nu, nu, nu, nu, nu];
    step = JSON.parse(id).step; following = false;
  } else if (moved !== 0) {
    step += moved; following = false;
  } else if (id === 'step-slider' && slider != null) {
    step = parseInt(slider); following = following && step >= last;
  } else if (id === 'play-tick') {
    step += Math.max(1, Math.floor(last / 100)); if (step > last) step = 0; following = false;
  }
  if (following) step = last;
  step = Math.min(Math.max(step, 0), last);
  const marks = {0: '0'}; if (last > 0) marks[last] = last.toLocaleString('en-US');
  if (current && current.step === step && id === 'run-state' && !following) {
    return [nu, Math.max(last, 1), nu, marks, nu, 'step ' + step.toLocaleString('en-US') + ' / ' + last.toLocaleString('en-US')];
  }
  return [{step: step, clicks: clicks}, Math.max(last, 1), step, marks, following ? ['follow'] : [],
          'step ' + step.toLocaleString('en-US') + ' / ' + last.toLocaleString('en-US')];
}
"""


def create_app(root_or_run: str | Path, token: str | None = None, *, host: str = "127.0.0.1",
               poll_s: float = 0.5) -> dash.Dash:
    """A dashboard over one run or all runs under a directory, to be served on `host`; with `token`,
    every request must present it. Host/Origin/body/run-key checks guard every route."""
    registry = RunRegistry(root_or_run, poll_s=poll_s)
    context = AppContext(registry)
    app = dash.Dash(__name__, title="DeepSeek Inspector", assets_folder=str(ASSETS),
                    suppress_callback_exceptions=True, update_title=None, eager_loading=True)
    app.inspector_registry = registry
    install_guards(app.server, host=host, token=token)
    app.layout = components.chrome(html.Div(id="page"))
    routes = {m.PATH: m for m in PAGE_MODULES}
    _register_core(app, context, routes)
    for module in PAGE_MODULES:
        module.register(app, context)
    default = registry.default_key()
    if default is not None:       # open (and read) the default run now, not on the first page load
        registry.get(default)
    return app


def _register_core(app: dash.Dash, context: AppContext, routes: dict) -> None:
    registry = context.registry

    @app.callback(Output("page", "children"), Input("url", "pathname"))
    def route(pathname):
        module = routes.get(pathname or "/")
        if module is None:
            return components.message(f"no page {pathname!r}; pick one from the menu")
        return module.layout()

    @app.callback(Output("nav", "children"), Output("run-select", "options"), Output("run-select", "value"),
                  Input("url", "pathname"), Input("url", "search"))
    def nav(pathname, search):
        key = run_key_from_search(search)
        query = f"?{urlencode({'run': key})}" if key is not None else ""
        links = [dash.dcc.Link(title, href=f"{path}{query}", className="active" if path == (pathname or "/") else "")
                 for path, title in components.PAGES]
        keys = registry.run_keys()
        current = key if key is not None else registry.default_key()
        options = [{"label": k or Path(registry.root).name, "value": k} for k in keys]
        return links, options, current

    @app.callback(Output("url", "search"), Input("run-select", "value"), State("url", "search"),
                  prevent_initial_call=True)
    def pick_run(value, search):
        if value is None or value == run_key_from_search(search):
            return no_update
        return f"?{urlencode({'run': value})}"

    @app.callback(Output("run-state", "data"), Output("run-header", "children"), Output("run-message", "children"),
                  Input("url", "search"), Input("live-tick", "n_intervals"), State("run-state", "data"))
    def run_state(search, _tick, previous):
        ref = registry.get(run_key_from_search(search))
        if ref.run is None:
            state = {"key": ref.key, "message": ref.message, "version": -1, "last_step": -1, "status": "none"}
            if state == previous:
                return no_update, no_update, no_update
            return state, html.Span("no run"), ref.message
        run = ref.run
        version = sum(run.version(k) for k in TABULAR_KINDS)
        status = run.status()
        state = {"key": ref.key, "message": None, "version": version, "last_step": run.last_step(), "status": status,
                 "ranks": rank_status_counts(run) if status == "live" else None}
        header = run_header(run)
        head = html.Span([html.Span(header.status, className=f"status {header.status}"), header.line().split(" · ", 2)[-1],
                          html.Span(f"  {header.name}", style={"color": "#64748b"})])
        if state == previous:
            return no_update, head if status == "live" else no_update, no_update
        note = ""
        if version == 0:
            note = "this run has no records yet"
        elif status == "crashed":
            note = (f"this run stopped without closing (crashed or killed); showing what it wrote, up to step "
                    f"{run.last_step():,}")
        elif status == "failed":
            note = "recording stopped on an error (see `inspector info`); showing what was written before it"
        problems = run.problems()
        if problems:
            more = f" (and {len(problems) - 1} more: `inspector info` lists them)" if len(problems) > 1 else ""
            note = (note + " · " if note else "") + f"⚠ {problems[0]}{more}"
        return state, head, note

    # In the browser (a clientside callback): no round trip, and quick clicks never read a stale step.
    app.clientside_callback(STEP_CONTROL_JS,
                            Output("step", "data"), Output("step-slider", "max"), Output("step-slider", "value"),
                            Output("step-slider", "marks"), Output("step-follow", "value"),
                            Output("step-label", "children"),
                            Input("run-state", "data"), Input("step-slider", "value"), Input("step-m10", "n_clicks"),
                            Input("step-m1", "n_clicks"), Input("step-p1", "n_clicks"), Input("step-p10", "n_clicks"),
                            Input("play-tick", "n_intervals"), Input({"type": "goto-step", "step": ALL, "row": ALL}, "n_clicks"),
                            Input("step-follow", "value"), State("step", "data"))

    @app.callback(Output("play-tick", "disabled"), Output("step-play", "children"), Input("step-play", "n_clicks"),
                  State("play-tick", "disabled"), prevent_initial_call=True)
    def play(_n, disabled):
        return (False, "❚❚ pause") if disabled else (True, "▶ play")
