"""PyTorch Lightning integration: `InspectorCallback` for `lightning.Trainer`.

    from inspector_plugins.lightning import InspectorCallback
    trainer = lightning.Trainer(callbacks=[InspectorCallback("runs/my-run")])
"""
from __future__ import annotations

from inspector.plugins import PluginContext


def register(ctx: PluginContext) -> None:
    """Nothing to add to the UIs or the probe registry: the callback is imported by users."""


def __getattr__(name: str):
    if name == "InspectorCallback":
        from inspector_plugins.lightning.callback import InspectorCallback

        return InspectorCallback
    raise AttributeError(name)
