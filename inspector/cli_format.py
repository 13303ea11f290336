"""Small text helpers for the CLI: sizes, ages, step ranges, and text from runs made safe to print."""
from __future__ import annotations

from typing import Any

from rich.markup import escape

from inspector.schema.run_meta import printable


def safe(value: Any, limit: int = 200) -> str:
    """Text from a run (a name, a host, a module, a message) ready for rich: control characters
    replaced, cut to `limit` characters, and markup such as "x[/]" shown as written."""
    return escape(printable(str(value), limit))


def count(value: Any) -> str:
    """An integer with thousands separators; anything else as it is (cut short)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return safe(value, 40)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_age(seconds: float) -> str:
    """Seconds -> '12s ago', '5m ago', '3h ago', '2d ago'."""
    s = max(0.0, seconds)
    for limit, div, unit in ((60, 1, "s"), (3600, 60, "m"), (86400, 3600, "h")):
        if s < limit:
            return f"{s / div:.0f}{unit} ago"
    return f"{s / 86400:.0f}d ago"


def parse_steps(text: str | None) -> tuple[int | None, int | None] | None:
    """'10:200' -> (10, 200); '10:' -> (10, None); '5' -> (5, 5); None -> None."""
    if text is None or text == "":
        return None
    if ":" not in text:
        return int(text), int(text)
    lo, hi = text.split(":", 1)
    return (int(lo) if lo else None), (int(hi) if hi else None)
