"""The weight-norm panel (dashboard) and screen (TUI): pure functions of a LiveRun; no torch."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from inspector.views.downsample import bin_columns, natural_key
from plugins.weight_norm.kind import WEIGHT_NORM

NO_DATA = "no weight norms recorded: start the run with watch(..., probes=[..., \"weight_norm\"])"


def weight_norm_matrix(run: Any, *, max_steps: int = 500) -> tuple[list[str], list[int], np.ndarray]:
    """(block names, steps, norm [blocks, steps]) of rank 0; above `max_steps` steps, binned (mean)."""
    df = run.frame(WEIGHT_NORM.name)
    if df.empty:
        return [], [], np.zeros((0, 0))
    df = df[df["rank"] == 0]
    wide = df.pivot_table(index="name", columns="step", values="norm", aggfunc="last", observed=True)
    wide = wide.reindex(sorted(wide.index, key=natural_key))
    steps, z = bin_columns(wide.columns.to_numpy(np.int64), wide.to_numpy(np.float64), max_steps, "mean")
    return [str(n) for n in wide.index], [int(s) for s in steps], z


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

    names, steps, mat = weight_norm_matrix(run)
    if not steps:
        return NO_DATA
    fig = go.Figure(go.Heatmap(z=mat, x=steps, y=names, colorscale="Viridis", colorbar={"title": "‖w‖₂"},
                               hovertemplate="%{y} step %{x}: %{z:.4g}<extra></extra>"))
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
        table.add_row(str(row.block), f"{row.norm:.4g}", f"{row.change:.3f}")
    return table
