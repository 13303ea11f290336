"""A matrix drawn with half-block characters: two matrix rows per terminal line, a colour ramp."""
from __future__ import annotations

import math

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

from inspector.tui.widgets.ramp import hex_colour, ramp_rgb, stops_for
from inspector.views.scales import Scale


def fit_matrix(m: np.ndarray, max_rows: int, max_cols: int) -> np.ndarray:
    """`m` block-averaged down, or repeated up by a whole factor, to fit max_rows × max_cols."""
    m = np.asarray(m, dtype=np.float64)
    rows, cols = m.shape
    if rows == 0 or cols == 0 or max_rows <= 0 or max_cols <= 0:
        return np.zeros((0, 0))
    if rows > max_rows or cols > max_cols:
        f = math.ceil(max(rows / max_rows, cols / max_cols))
        pr, pc = math.ceil(rows / f) * f, math.ceil(cols / f) * f
        padded = np.full((pr, pc), np.nan)
        padded[:rows, :cols] = m
        with np.errstate(invalid="ignore"), _quiet():
            return np.nanmean(padded.reshape(pr // f, f, pc // f, f), axis=(1, 3))
    s = max(1, min(max_rows // rows, max_cols // cols))
    return np.kron(m, np.ones((s, s)))


class _quiet:
    def __enter__(self) -> None:
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._w.__exit__(*exc)


def half_block_strips(m: np.ndarray, *, gamma: float = 0.5, scale: Scale | None = None) -> list[Strip]:
    """One Strip per pair of matrix rows: '▀' with the upper row as foreground, the lower as background.

    With a `scale`, colours are anchored to it (`scale.position`, its ramp); without one, 0 … the
    matrix's maximum with `gamma`.
    """
    if m.size == 0:
        return []
    if scale is not None:
        norm, stops = scale.position(m), stops_for(scale.alarm)
    else:
        top = float(np.nanmax(m)) if np.isfinite(m).any() else 0.0
        norm = (np.clip(m, 0, None) / top) ** gamma if top > 0 else np.zeros_like(m)
        stops = stops_for("none")
    if norm.shape[0] % 2:
        norm = np.vstack([norm, np.full((1, norm.shape[1]), np.nan)])
    rgb = ramp_rgb(norm, stops)
    strips: list[Strip] = []
    for y in range(0, norm.shape[0], 2):
        segs = []
        for x in range(norm.shape[1]):
            upper = hex_colour(rgb[y, x])
            if np.isnan(norm[y + 1, x]):
                segs.append(Segment("▀", Style(color=upper)))
            else:
                segs.append(Segment("▀", Style(color=upper, bgcolor=hex_colour(rgb[y + 1, x]))))
        strips.append(Strip(segs, len(segs)))
    return strips


class HeatMap(Widget):
    """A heatmap of a non-negative matrix, redrawn to fit the widget's size (square half-block pixels),
    coloured on a `Scale` when one is given."""

    DEFAULT_CSS = "HeatMap { height: 1fr; width: 1fr; }"

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._matrix: np.ndarray | None = None
        self._scale: Scale | None = None
        self._strips: list[Strip] = []
        self._built_for: Size | None = None

    @property
    def matrix(self) -> np.ndarray | None:
        """The matrix shown (None when empty)."""
        return self._matrix

    @property
    def scale(self) -> Scale | None:
        """The colour scale of the map (None: 0 … the matrix's maximum)."""
        return self._scale

    def set_matrix(self, matrix: np.ndarray | None, scale: Scale | None = None) -> None:
        """Show `matrix` coloured on `scale` (None clears the map)."""
        self._matrix = None if matrix is None else np.asarray(matrix)
        self._scale = scale
        self._built_for = None
        self.refresh()

    def _build(self) -> None:
        size = self.size
        if self._built_for == size:
            return
        self._built_for = size
        if self._matrix is None or self._matrix.size == 0:
            self._strips = []
            return
        self._strips = half_block_strips(fit_matrix(self._matrix, size.height * 2, size.width), scale=self._scale)

    def render_line(self, y: int) -> Strip:
        """Line `y` of the map (blank below it)."""
        self._build()
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width, self.rich_style)
