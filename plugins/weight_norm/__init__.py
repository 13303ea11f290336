"""Worked example plugin: per-block weight norms, recorded by a probe and shown in both UIs.

What a plugin does, in four calls on the context it is handed:

    def register(ctx):
        ctx.add_kind(WEIGHT_NORM)                                          # its record kind
        ctx.add_probe("weight_norm", "inspector_plugins.weight_norm.probe:WeightNormProbe")  # torch side
        ctx.add_dash_panel("weight_norm", "Weight norm per block", dash_figure)     # dashboard
        ctx.add_tui_screen("weight_norm", "Weight norms", "w", tui_render)          # terminal UI

The probe module (which imports torch) is imported only by `watch(probes=[..., "weight_norm"])`
in the training process; the kind and the two render functions import no torch, so the UIs stay
light. Published in `pyproject.toml` as `weight_norm = "inspector_plugins.weight_norm:register"`.
"""
from __future__ import annotations

from inspector.plugins import PluginContext
from inspector_plugins.weight_norm.kind import WEIGHT_NORM
from inspector_plugins.weight_norm.render import dash_figure, tui_render


def register(ctx: PluginContext) -> None:
    """Add the weight-norm kind, probe, dashboard panel and TUI screen."""
    ctx.add_kind(WEIGHT_NORM)
    ctx.add_probe("weight_norm", "inspector_plugins.weight_norm.probe:WeightNormProbe")
    ctx.add_dash_panel("weight_norm", "Weight norm per block", dash_figure)
    ctx.add_tui_screen("weight_norm", "Weight norms", "w", tui_render)
