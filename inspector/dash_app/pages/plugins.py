"""Plugins: the panels that plugins registered (`ctx.add_dash_panel`), each drawn at the selected step."""
from __future__ import annotations

from dash import ALL, Input, Output, dcc, html

from inspector.dash_app.components import message, panel
from inspector.dash_app.context import AppContext, guarded, selected_step
from inspector.dash_app.figures import TEMPLATE, empty_figure
from inspector.plugins import PanelEntry, load_plugins

PATH = "/plugins"
TITLE = "Plugins"


def _panels() -> list[PanelEntry]:
    return load_plugins().dash_panels


def layout() -> html.Div:
    """One slot per registered panel (or a note when no plugin adds one)."""
    panels = _panels()
    if not panels:
        return html.Div(className="page", children=[panel(message(
            "no plugin adds a dashboard panel; `inspector plugins` lists what loaded"), wide=True)])
    return html.Div(className="page", children=[
        panel(html.Div(f"{p.title} (plugin {p.plugin})", className="controls"),
              html.Div(id=f"plugin-{p.name}", children=dcc.Graph(
                  id={"type": "plugin-graph", "name": p.name}, config={"displaylogo": False},
                  style={"minHeight": "320px"})),
              html.Div(id={"type": "plugin-msg", "name": p.name}), wide=True)
        for p in panels])


def _render(p: PanelEntry, run, step: int):
    """(figure, message) for one panel: a figure is shown, a string becomes a notice, a component is shown as is."""
    out = p.render(run, step)
    if isinstance(out, str):
        return empty_figure(out, height=120), ""
    if hasattr(out, "to_plotly_json") and hasattr(out, "layout") and hasattr(out, "data"):
        out.update_layout(template=TEMPLATE)
        title = getattr(getattr(out.layout, "title", None), "text", None)
        if isinstance(title, str) and title.strip().lower() == p.title.strip().lower():
            out.update_layout(title=None, margin_t=20)  # the panel's header already says it
        return out, ""
    return empty_figure("", height=40), out


def register(app, context: AppContext) -> None:
    """Every panel redraws when the step or the run changes; a failing panel shows its error only."""

    @app.callback(Output({"type": "plugin-graph", "name": ALL}, "figure"),
                  Output({"type": "plugin-msg", "name": ALL}, "children"),
                  Input("step", "data"), Input("run-state", "data"))
    def draw(step_data, state):
        panels = {p.name: p for p in _panels()}
        ref = context.run_for(state)
        figures, notes = [], []
        for p in panels.values():
            if ref.run is None:
                figures.append(empty_figure(ref.message, height=120))
                notes.append("")
                continue
            fig, note = guarded(lambda msg: (empty_figure(msg, height=120), ""))(_render)(
                p, ref.run, selected_step(step_data))
            figures.append(fig)
            notes.append(note)
        return figures, notes
