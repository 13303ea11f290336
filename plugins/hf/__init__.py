"""Hugging Face transformers integration: `InspectorCallback` for `transformers.Trainer`.

    from inspector_plugins.hf import InspectorCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[InspectorCallback()])

Attention capture (the function transformers' `AttentionInterface` picks, wrapped while a watch is
open; the model keeps its own implementation name, so sdpa/eager/flash paths and outputs stay
exactly as they are) and the Mixtral / Qwen-MoE / DeepSeek-V3 router capture are part of the
probes themselves (`inspector/probes/attention/hf.py`, `inspector/probes/experts/`):
`inspector.watch` works on a Hugging Face model with or without this plugin. The plugin adds the Trainer glue.
"""
from __future__ import annotations

from inspector.plugins import PluginContext


def register(ctx: PluginContext) -> None:
    """Nothing to add to the UIs or the probe registry: the callback is imported by users."""


def __getattr__(name: str):
    if name == "InspectorCallback":
        from inspector_plugins.hf.callback import InspectorCallback

        return InspectorCallback
    raise AttributeError(name)
