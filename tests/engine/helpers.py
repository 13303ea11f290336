"""Helpers shared by the engine tests."""

from __future__ import annotations

import torch

from inspector_engine.config import get_config
from inspector_engine.model import Transformer


def make_model(name: str = "debug", **overrides: object) -> Transformer:
    """A deterministic random-init model (seeded) in eval mode."""
    torch.manual_seed(1234)
    return Transformer(get_config(name, **overrides)).eval()
