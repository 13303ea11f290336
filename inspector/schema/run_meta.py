"""Run metadata (`run.json`) and the store's format version."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSION = 1
"""Version of the on-disk run format (run.json, frames, blobs). Readers refuse newer versions."""


@dataclass
class RunMeta:
    """What `run.json` holds: who made the run, with what model, config and probe settings."""

    name: str
    format_version: int = FORMAT_VERSION
    created: float = field(default_factory=time.time)
    world_size: int = 1
    model: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    probes: dict[str, Any] = field(default_factory=dict)
    host: str = ""
    command: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunMeta":
        """Build from a parsed run.json, keeping only known fields (unknown ones are ignored)."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "name" not in known:
            raise ValueError("run.json has no 'name'")
        return cls(**known)
