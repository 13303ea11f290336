"""Imports every built-in probe module so that each registers itself (import order = attach order)."""
from __future__ import annotations

from inspector.probes import (  # noqa: F401
    timing,
    attention,
    activations,
    gradients,
    experts,
    anomalies,
    system,
    replay,
)
