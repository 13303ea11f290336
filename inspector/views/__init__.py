"""Views: pure functions from a run (through `RunReader`) to plot-ready data.

No UI code and no torch here: the Dash dashboard and the Textual TUI both draw from these.
`LiveRun` tails a run (live or finished) and keeps the tables it has read; every other module is
a set of pure functions over a `LiveRun` (or over DataFrames) that bound their output (a step
range, a point count), so no view ever loads or draws a whole large run at once.
"""
from inspector.views.downsample import downsample_indices, downsample_xy
from inspector.views.live import LiveRun, RunNotReady, open_live

__all__ = ["LiveRun", "RunNotReady", "downsample_indices", "downsample_xy", "open_live"]
