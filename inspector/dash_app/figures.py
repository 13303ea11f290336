"""Plotly figures in one light theme, built from views outputs (never from raw records)."""
from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import sample_colorscale

from inspector.views.downsample import NONFINITE_LABELS, nonfinite_codes
from inspector.views.scales import Scale

TEMPLATE = "inspector"
COLORWAY = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
            "#475569", "#ea580c"]
PHASE_COLORS = {"forward": "#2563eb", "backward": "#7c3aed", "optimizer": "#059669", "data": "#d97706",
                "other": "#94a3b8"}
HEAT = "Viridis"
MAX_LEGEND = 12
SIDE_LEGEND = 4
"""Line charts with more series than this put the legend on the right, one name per row."""
NONFINITE_COLOR = "#dc2626"
NONFINITE_NAME = "✕ NaN/Inf"
ANOMALY_MARKER = dict(symbol="triangle-down", size=11, color="#ea580c", line=dict(color="white", width=1))
"""How a detector's anomaly is marked on a chart: an orange ▼, apart from the red ✕ of NaN/Inf values."""
"""Legend name of the markers that stand for non-finite values (never dropped from a chart)."""
THRESHOLD_COLOR = "#64748b"

_base = pio.templates["plotly_white"]
pio.templates[TEMPLATE] = go.layout.Template(_base).update(layout=dict(
    colorway=COLORWAY, font=dict(family="Liberation Sans, Arial, sans-serif", size=12, color="#1e293b"),
    margin=dict(l=56, r=16, t=64, b=40),
    title=dict(font=dict(size=14), x=0.01, xanchor="left", y=0.985, yref="container", yanchor="top"),
    legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0.0, font=dict(size=11)),
    hoverlabel=dict(font_size=12), paper_bgcolor="white", plot_bgcolor="white"))


def empty_figure(message: str, *, height: int = 260) -> go.Figure:
    """A blank figure that says why there is nothing to draw."""
    fig = go.Figure(layout=dict(template=TEMPLATE, height=height, xaxis=dict(visible=False),
                                yaxis=dict(visible=False), meta={"empty": message}))
    fig.add_annotation(text="<br>".join(textwrap.wrap(message, 70)) or message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14, color="#64748b"))
    return fig


def line_figure(series: Mapping[str, pd.DataFrame], *, title: str, ytitle: str = "", xcol: str = "step",
                xtitle: str = "step", log_y: bool = False, height: int = 260, empty: str = "nothing recorded",
                mode: str = "lines") -> go.Figure:
    """One line per entry of `series` (frames with `xcol` and `value`), already downsampled by the views."""
    series = {k: v for k, v in series.items() if v is not None and len(v)}
    if not series:
        return empty_figure(f"{title}: {empty}", height=height)
    fig = go.Figure(layout=dict(template=TEMPLATE, height=height, title=title,
                                xaxis=dict(title=xtitle), yaxis=dict(title=ytitle, type="log" if log_y else "linear"),
                                showlegend=1 < len(series) <= MAX_LEGEND))
    if len(series) > MAX_LEGEND:
        fig.update_layout(title=f"{title} ({len(series)} series; hover for names)")
    elif len(series) > SIDE_LEGEND:  # a legend of many rows above the plot would cover the title
        fig.update_layout(legend=dict(orientation="v", x=1.01, xanchor="left", y=1.0, yanchor="top"))
    for name, df in series.items():
        y = df["value"].to_numpy(np.float64)
        fig.add_trace(go.Scatter(x=df[xcol].to_numpy(), y=np.where(np.isfinite(y), y, np.nan), name=name, mode=mode,
                                 line=dict(width=1.5), hovertemplate=f"{name}<br>{xtitle} %{{x}}<br>%{{y:.4g}}<extra></extra>"))
    add_nonfinite_markers(fig, {name: (df[xcol].to_numpy(), df["value"].to_numpy(np.float64))
                                for name, df in series.items()}, xtitle=xtitle, log_y=log_y)
    return fig


def _edge(ys: Sequence[np.ndarray], log_y: bool) -> float:
    """The top of the finite data range (where non-finite markers sit), 1 when nothing is finite."""
    finite = np.concatenate([y[np.isfinite(y) & ((y > 0) if log_y else True)] for y in ys] or [np.empty(0)])
    return float(finite.max()) if finite.size else 1.0


def add_nonfinite_markers(fig: go.Figure, series: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                          xtitle: str = "step", log_y: bool = False, row: int | None = None,
                          col: int | None = None) -> go.Figure:
    """A red ✕ at every non-finite point of `series` ({name: (x, y)}), at the top edge of the finite
    range, with hover text "name = NaN" (+Inf, −Inf): a NaN/Inf step never just vanishes."""
    xs, texts = [], []
    for name, (x, y) in series.items():
        codes = nonfinite_codes(y)
        for i in np.flatnonzero(codes):
            xs.append(x[i])
            texts.append(f"{name} = {NONFINITE_LABELS[int(codes[i])]}")
    if not xs:
        return fig
    edge = _edge([y for _, y in series.values()], log_y)
    if row is None and fig.layout.showlegend is False:   # too many lines for a legend: name only the markers
        fig.update_traces(showlegend=False)
    fig.add_trace(go.Scatter(x=xs, y=[edge] * len(xs), mode="markers", name=NONFINITE_NAME, text=texts,
                             marker=dict(symbol="x", size=11, color=NONFINITE_COLOR, line=dict(width=1)),
                             hovertemplate=f"{xtitle} %{{x}}<br>%{{text}}<extra>non-finite</extra>",
                             showlegend=row is None), row=row, col=col)
    if row is None:
        fig.update_layout(showlegend=True)
    return fig


def add_threshold(fig: go.Figure, value: float | None, label: str, *, color: str = THRESHOLD_COLOR) -> go.Figure:
    """A dashed horizontal line at `value` (nothing when None) labelled `label` at its right end."""
    if value is not None and np.isfinite(value) and fig.data:
        fig.add_hline(y=value, line=dict(color=color, width=1.2, dash="dash"), annotation_text=label,
                      annotation_position="top right", annotation_font=dict(size=11, color=color))
    return fig


def heatmap_figure(z: np.ndarray, *, x: Sequence | np.ndarray, y: Sequence[str] | np.ndarray, title: str,
                   xtitle: str = "step", ytitle: str = "", ztitle: str = "", height: int = 320,
                   colorscale: str = HEAT, log: bool = False, hover: str = "%{y}<br>step %{x}<br>%{z:.4g}",
                   zmin: float | None = None, zmax: float | None = None,
                   nonfinite: np.ndarray | None = None) -> go.Figure:
    """A heatmap [rows, columns]; `log` colours by log10 (the hover shows the raw value).

    Non-finite cells (`nonfinite`: `downsample.nonfinite_codes` of the recorded values; by default
    the ±Inf cells of `z`, since a NaN there may mean "not recorded") are drawn red with a ✕ and
    hover text NaN/+Inf/−Inf, on a layer above the colour scale, which they do not stretch.
    """
    z = np.asarray(z, dtype=np.float64)
    codes = nonfinite_codes(z, np.zeros(z.shape, dtype=bool)) if nonfinite is None else np.asarray(nonfinite)
    z = np.where(np.isinf(z), np.nan, z)
    shown = z
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            shown = np.where(z > 0, np.log10(z), np.nan)
        ztitle = f"log10 {ztitle}".strip()
    fig = go.Figure(go.Heatmap(z=shown, x=np.asarray(x), y=list(y), colorscale=colorscale, zmin=zmin, zmax=zmax,
                               customdata=z if log else None, colorbar=dict(title=dict(text=ztitle, side="right"), thickness=12),
                               hovertemplate=(hover.replace("%{z", "%{customdata") if log else hover) + "<extra></extra>"),
                    layout=dict(template=TEMPLATE, height=height, title=title, xaxis=dict(title=xtitle),
                                yaxis=dict(title=ytitle, autorange="reversed", automargin=True)))
    if codes.shape == z.shape and codes.any():
        labels = np.vectorize(lambda c: NONFINITE_LABELS.get(int(c), ""), otypes=[object])(codes)
        fig.add_trace(go.Heatmap(z=np.where(codes > 0, 1.0, np.nan), x=np.asarray(x), y=list(y), name=NONFINITE_NAME,
                                 colorscale=[[0, NONFINITE_COLOR], [1, NONFINITE_COLOR]], showscale=False,
                                 zmin=0, zmax=1, text=np.where(codes > 0, "✕", ""), customdata=labels,
                                 texttemplate="%{text}", textfont=dict(color="white", size=10), hoverongaps=False,
                                 hovertemplate="%{y}<br>step %{x}<br>%{customdata}<extra>non-finite</extra>"))
    return fig


FLAG_MARKER = dict(symbol="x", size=11, color="#2563eb", line=dict(color="white", width=1))
"""How a flagged cell of a heatmap (collapsed head, starved expert) is marked: a blue ✕."""


HOT_MARKER = dict(symbol="triangle-up", size=11, color="#f97316", line=dict(color="white", width=1))
"""How an overloaded (hot) expert's cell is marked: an orange ▲."""


def add_flag_markers(fig: go.Figure, onsets: Mapping[str, int], verb: str, *, name: str | None = None,
                     marker: Mapping[str, object] = FLAG_MARKER) -> go.Figure:
    """A marker (default a blue ✕) on each flagged row of a heatmap ({row label: step}) where the
    condition began; the legend says "`verb` from", the hover "<row> `verb` from step N"."""
    if onsets:
        fig.add_trace(go.Scatter(x=list(onsets.values()), y=list(onsets), mode="markers", name=name or f"{verb} from",
                                 marker=dict(marker), hovertemplate=f"%{{y}} {verb} from step %{{x}}<extra></extra>"))
    return fig


def add_step_marker(fig: go.Figure, step: int | None) -> go.Figure:
    """A dashed vertical line at the selected step."""
    if step is not None and fig.data:
        fig.add_vline(x=step, line=dict(color="#f97316", width=1.5, dash="dash"))
    return fig


PALETTES = {"low": ("YlOrRd", True), "high": ("YlOrRd", False), "both": ("RdBu", True), "none": (HEAT, False)}
"""Plotly palette per `Scale.alarm`, and whether it runs backwards: the alarming end is dark red
(low entropy is collapse), a diverging scale is blue (starved) … white (centre) … red (hot)."""


def colourscale(scale: Scale, stops: int = 17) -> list[list]:
    """A Plotly colourscale over `scale.lo … scale.hi` (as zmin/zmax) that puts each colour where
    `scale.position` says: a √ ramp, or a diverging ramp whose middle colour sits on its centre."""
    name, backwards = PALETTES[scale.alarm]
    ramp = np.linspace(0.0, 1.0, stops)
    values = (scale.value_at(ramp) - scale.lo) / (scale.hi - scale.lo)
    colours = sample_colorscale(name, list(1.0 - ramp if backwards else ramp))
    values[0], values[-1] = 0.0, 1.0
    return [[float(v), c] for v, c in zip(values, colours)]
