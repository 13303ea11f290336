"""Number formatting for the tables (N/A for missing values)."""
from __future__ import annotations

import math


def _ok(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


def num(v: object, fmt: str = "{:.3g}", na: str = "N/A") -> str:
    """`fmt` of v, or `na` when v is missing or not finite."""
    return fmt.format(float(v)) if _ok(v) else na


def gib(used: object, total: object) -> str:
    """'4.0/8.0G' from bytes (either may be missing)."""
    if not _ok(used):
        return "N/A"
    u = float(used) / 2**30
    return f"{u:.1f}/{float(total) / 2**30:.1f}G" if _ok(total) and float(total) > 0 else f"{u:.1f}G"
