"""Compare: two or more runs under the root overlaid (loss, grad norm, step time, expert imbalance)."""
from __future__ import annotations

from dash import Input, Output, dcc, html

from inspector.dash_app.components import graph, panel
from inspector.dash_app.context import AppContext, guarded
from inspector.dash_app.figures import COLORWAY, add_threshold, empty_figure, line_figure
from inspector.views.compare import COMPARE_METRICS, compare_series
from inspector.views.series import clip_threshold

PATH = "/compare"
TITLE = "Compare"
GRAPHS = [f"cmp-{m}" for m in COMPARE_METRICS]


MAX_COMPARED = 12
"""Runs drawn together on the compare page at most."""


def layout() -> html.Div:
    """A multi-run picker and one overlay chart per metric."""
    return html.Div(className="page", children=[
        panel(html.Div(className="controls", children=[
            html.Span("runs"), dcc.Dropdown(id="cmp-runs", options=[], value=[], multi=True,
                                            style={"minWidth": "520px"})]), wide=True),
        *[panel(graph(g, 300)) for g in GRAPHS],
    ])


def register(app, context: AppContext) -> None:
    """Options from the root; charts from the chosen runs (the current run and the next newest by default)."""
    registry = context.registry

    @app.callback(Output("cmp-runs", "options"), Output("cmp-runs", "value"), Input("run-state", "data"),
                  Input("cmp-runs", "value"))
    def options(state, chosen):
        keys = registry.run_keys()
        opts = [{"label": k or registry.root.name, "value": k} for k in keys]
        if chosen:
            return opts, [k for k in chosen if k in keys]
        current = (state or {}).get("key")
        default = [current] if current in keys else []
        default += [k for k in keys if k not in default][: max(0, 2 - len(default))]
        return opts, default

    @app.callback(*[Output(g, "figure") for g in GRAPHS], Input("cmp-runs", "value"), Input("run-state", "data"))
    @guarded(lambda msg: tuple(empty_figure(msg, height=300) for _ in GRAPHS))
    def draw(chosen, _state):
        # Only runs the picker offers, once each and at most MAX_COMPARED: a crafted callback body
        # cannot make the server open thousands of paths.
        listed = set(registry.run_keys())
        strings = [k for k in chosen if isinstance(k, str)] if isinstance(chosen, list) else []
        chosen = [k for k in dict.fromkeys(strings) if k in listed][:MAX_COMPARED]
        if not chosen:
            return tuple(empty_figure("pick runs to compare", height=300) for _ in GRAPHS)
        runs = {}
        notes = []
        for key in chosen:
            ref = registry.get(key)
            if ref.run is not None:
                runs[key or registry.root.name] = ref.run
            else:
                notes.append(ref.message)
        figs = []
        for metric, label in COMPARE_METRICS.items():
            series = {name: compare_series(run, metric) for name, run in runs.items()}
            fig = line_figure(series, title=label, height=300,
                              empty="not recorded in the chosen runs" + (f" ({notes[0]})" if notes else ""))
            if metric == "grad_norm":  # before clipping; each run's clip threshold, inferred, dashed
                drawn = [name for name, df in series.items() if df is not None and len(df)]
                for i, name in enumerate(drawn):
                    limit = clip_threshold(runs[name])
                    add_threshold(fig, limit, f"{name}: clip ≈ {limit:.3g} (inferred)" if limit is not None else "",
                                  color=COLORWAY[i % len(COLORWAY)])
            figs.append(fig)
        return tuple(figs)
