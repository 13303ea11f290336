"""Run metadata (`run.json`) and the store's format version.

`RunMeta.from_dict` validates what it reads: a run directory may come from anywhere, so every
field is type-checked, and the texts a person sees (name, host) are made printable and bounded
before any UI draws them.
"""
from __future__ import annotations

import time
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSION = 1
"""Version of the on-disk run format (run.json, frames, blobs). Readers refuse newer versions."""

MAX_WORLD_SIZE = 1 << 20
MAX_NAME_CHARS = 200
MAX_NESTING = 32


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
        """Build from a parsed run.json, keeping only known fields (unknown ones are ignored).

        ValueError (one line) when a field has the wrong type or value.
        """
        if "name" not in data:
            raise ValueError("run.json has no 'name'")
        name = data["name"]
        if not isinstance(name, str):
            raise ValueError(f"'name' must be a string, not {type(name).__name__}")
        version = data.get("format_version", FORMAT_VERSION)
        if not _is_int(version) or version < 1:
            raise ValueError("'format_version' must be a positive integer")
        world = data.get("world_size", 1)
        if not _is_int(world) or not 1 <= world <= MAX_WORLD_SIZE:
            raise ValueError(f"'world_size' must be an integer from 1 to {MAX_WORLD_SIZE:,}, not {_shown(world)}")
        created = data.get("created", time.time())
        # a range check, not math.isfinite: that overflows on a huge int (NaN fails the range too)
        if isinstance(created, bool) or not isinstance(created, (int, float)) or not 0 <= created < 1e11:
            raise ValueError(f"'created' must be a time in seconds since 1970, not {_shown(created)}")
        dicts = {}
        for key in ("model", "config", "probes"):
            value = data.get(key, {})
            if not isinstance(value, dict):
                raise ValueError(f"'{key}' must be an object, not {type(value).__name__}")
            if _depth(value) > MAX_NESTING:
                raise ValueError(f"'{key}' is nested more than {MAX_NESTING} levels deep")
            dicts[key] = value
        host = data.get("host", "")
        if not isinstance(host, str):
            raise ValueError(f"'host' must be a string, not {type(host).__name__}")
        command = data.get("command", [])
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            raise ValueError("'command' must be a list of strings")
        return cls(name=printable(name), format_version=version, created=float(created), world_size=world,
                   host=printable(host), command=command, **dicts)


def printable(text: str, limit: int = MAX_NAME_CHARS) -> str:
    """`text` with control and format characters (escape sequences, bidi overrides) replaced by
    "?", and cut to `limit` characters with an ellipsis: safe to draw in any terminal or page."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    if text.isprintable():
        return text
    return "".join("?" if unicodedata.category(c)[0] == "C" else c for c in text)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _depth(value: Any) -> int:
    """Nesting depth of dicts and lists (iterative: a hostile file cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_NESTING:
            return deepest
        stack.extend((c, depth + 1) for c in children)
    return deepest
