"""Imports every built-in probe module so that each registers itself (order = attach order)."""
from __future__ import annotations

import importlib
import logging

_MODULES = ["timing", "attention", "activations", "gradients", "experts", "anomalies", "system"]

for _name in _MODULES:
    try:
        importlib.import_module(f"inspector.probes.{_name}")
    except ModuleNotFoundError as exc:  # a probe still being written must not break the others
        if exc.name != f"inspector.probes.{_name}":
            raise
        logging.getLogger("inspector").debug("probe module %s not present", _name)
