"""Page chrome shared by every page: navigation, run header, global step control."""
from __future__ import annotations

from dash import dcc, html

PAGES = [("/", "Overview"), ("/attention", "Attention"), ("/gradients", "Gradients"),
         ("/activations", "Activations"), ("/experts", "Experts"), ("/inference", "Inference"), ("/system", "System"), ("/compare", "Compare"),
         ("/plugins", "Plugins")]
"""URL path and title of every page, in menu order."""


def _button(id_: str, label: str, title: str) -> html.Button:
    return html.Button(label, id=id_, n_clicks=0, title=title, className="step-btn")


def step_control() -> html.Div:
    """Slider, ±1/±10 buttons, play/pause and "follow latest": they drive the `step` store."""
    return html.Div(className="step-control", children=[
        _button("step-m10", "−10", "10 steps back"), _button("step-m1", "−1", "one step back"),
        _button("step-play", "▶ play", "play / pause"),
        _button("step-p1", "+1", "one step forward"), _button("step-p10", "+10", "10 steps forward"),
        html.Div(dcc.Slider(id="step-slider", min=0, max=1, step=1, value=0, updatemode="mouseup",
                            marks=None, tooltip={"placement": "bottom", "always_visible": False}),
                 className="step-slider"),
        dcc.Checklist(id="step-follow", options=[{"label": " follow latest", "value": "follow"}],
                      value=["follow"], className="step-follow"),
        html.Span(id="step-label", className="step-label"),
    ])


def chrome(page_container: html.Div) -> html.Div:
    """The whole app layout around the page container."""
    return html.Div(className="app", children=[
        dcc.Location(id="url", refresh=False),
        dcc.Store(id="run-state", data=None),
        dcc.Store(id="step", data={"step": 0}),
        dcc.Interval(id="live-tick", interval=1000, n_intervals=0),
        dcc.Interval(id="play-tick", interval=400, n_intervals=0, disabled=True),
        html.Header(className="top", children=[
            html.Div(className="brand", children="DeepSeek Inspector"),
            html.Nav(id="nav", className="nav"),
            dcc.Dropdown(id="run-select", options=[], value=None, clearable=False, placeholder="run",
                         className="run-select"),
        ]),
        html.Div(className="subheader", children=[
            html.Div(id="run-header", className="run-header"),
            step_control(),
        ]),
        html.Div(id="run-message", className="run-message"),
        page_container,
    ])


def graph(id_: str, height: int = 260) -> dcc.Graph:
    """A graph slot; the figure's own height wins (heatmaps grow with their rows), `height` is the minimum
    kept while it loads so the page does not jump."""
    return dcc.Graph(id=id_, config={"displaylogo": False}, style={"minHeight": f"{height}px"})


def panel(*children, wide: bool = False) -> html.Div:
    """A card around one or more components."""
    return html.Div(className="panel wide" if wide else "panel", children=list(children))


def message(text: str) -> html.Div:
    """A one-line notice in place of a panel."""
    return html.Div(text, className="notice")
