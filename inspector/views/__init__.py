"""Views: pure functions from a run (through `RunReader`) to plot-ready data.

No UI code and no torch here: the Dash dashboard and the Textual TUI both draw from these.
`LiveRun` tails a run (live or finished) and keeps the tables it has read; every other module is
a set of pure functions over a `LiveRun` (or over DataFrames) that bound their output (a step
range, a point count), so no view ever loads or draws a whole large run at once.
The names below are imported on first use, so a light module such as `inspector.views.scales`
loads without pandas or pyarrow.
"""
from inspector.lazy_exports import lazy_getattr

_EXPORTS = {
    "LiveRun": ("inspector.views.live", "LiveRun"),
    "RunNotReady": ("inspector.views.live", "RunNotReady"),
    "open_live": ("inspector.views.live", "open_live"),
    "downsample_indices": ("inspector.views.downsample", "downsample_indices"),
    "downsample_xy": ("inspector.views.downsample", "downsample_xy"),
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
