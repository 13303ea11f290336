"""The weight-norm panel (dashboard) and screen (TUI): pure functions of a LiveRun; no torch."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from inspector.views.downsample import NONFINITE_LABELS, bin_codes, bin_columns, nonfinite_codes
from inspector.views.gradients import wide_matrix
from inspector_plugins.weight_norm.kind import WEIGHT_NORM

NO_DATA = "no weight norms recorded: start the run with watch(..., probes=[..., \"weight_norm\"])"


def weight_norm_codes(run: Any, *, max_steps: int = 500) -> np.ndarray:
    """`nonfinite_codes` (1 NaN, 2 +Inf, 3 −Inf) of `weight_norm_matrix`'s cells, binned the same way."""
    return _matrix(run, max_steps)[3]


def weight_norm_matrix(run: Any, *, max_steps: int = 500) -> tuple[list[str], list[int], np.ndarray]:
    """(block names, steps, norm [blocks, steps]) of rank 0; above `max_steps` steps, binned (mean).
    Every recorded step keeps its column, even one whose norms are all NaN."""
    return _matrix(run, max_steps)[:3]


def _matrix(run: Any, max_steps: int) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
    df = run.frame(WEIGHT_NORM.name)
    df = df[df["rank"] == 0] if not df.empty else df
    if df.empty:
        return [], [], np.zeros((0, 0)), np.zeros((0, 0), np.int8)
    names, steps, z, codes = wide_matrix(df, "norm")
    binned, z = bin_columns(steps, z, max_steps, "mean")
    return names, [int(s) for s in binned], z, bin_codes(codes, max_steps)


def latest_norms(run: Any, step: int) -> pd.DataFrame:
    """Block, norm and RMS at the last recorded step ≤ `step` (rank 0)."""
    names, steps, mat = weight_norm_matrix(run, max_steps=1 << 30)
    if not steps:
        return pd.DataFrame(columns=["block", "norm", "change"])
    i = max(0, int(np.searchsorted(steps, step, side="right")) - 1)
    first = mat[:, 0]
    return pd.DataFrame({"block": names, "norm": mat[:, i], "change": mat[:, i] / np.where(first > 0, first, np.nan)})


def dash_figure(run: Any, step: int) -> Any:
    """Dashboard panel: weight norm per block (rows) over steps (columns), selected step marked."""
    import plotly.graph_objects as go

    names, steps, mat, codes = _matrix(run, 500)
    if not steps:
        return NO_DATA
    fig = go.Figure(go.Heatmap(z=np.where(np.isfinite(mat), mat, np.nan), x=steps, y=names, colorscale="Viridis",
                               colorbar={"title": "‖w‖₂"}, hovertemplate="%{y} step %{x}: %{z:.4g}<extra></extra>"))
    if codes.any():  # non-finite cells: red with a ✕ and NaN/+Inf/−Inf on hover, never a gap
        labels = np.vectorize(lambda c: NONFINITE_LABELS.get(int(c), ""), otypes=[object])(codes)
        fig.add_trace(go.Heatmap(z=np.where(codes > 0, 1.0, np.nan), x=steps, y=names, name="✕ NaN/Inf",
                                 colorscale=[[0, "#dc2626"], [1, "#dc2626"]], showscale=False, zmin=0, zmax=1,
                                 text=np.where(codes > 0, "✕", ""), texttemplate="%{text}", customdata=labels,
                                 textfont={"color": "white"}, hoverongaps=False,
                                 hovertemplate="%{y} step %{x}: %{customdata}<extra>non-finite</extra>"))
    fig.add_vline(x=step, line_color="white", line_dash="dot")
    fig.update_layout(title="Weight norm per block", xaxis_title="step", margin={"l": 90, "r": 20, "t": 40, "b": 40})
    return fig


def tui_render(run: Any, step: int) -> Any:
    """TUI screen: a table of each block's weight norm and its change since the first sample."""
    from rich.table import Table

    df = latest_norms(run, step)
    if df.empty:
        return NO_DATA
    table = Table(title=f"weight norm per block (step ≤ {step})", title_justify="left", min_width=44)
    for col, justify in (("block", "left"), ("‖w‖₂", "right"), ("× first", "right")):
        table.add_column(col, justify=justify)
    for row in df.itertuples():
        label = NONFINITE_LABELS.get(int(nonfinite_codes(np.array([row.norm]))[0]))
        norm = f"[bold red]✕ {label}[/]" if label else f"{row.norm:.4g}"
        table.add_row(str(row.block), norm, f"{row.change:.3f}")
    return table
