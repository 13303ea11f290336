"""Number formatting for the tables (N/A for missing values)."""
from __future__ import annotations

import math
from typing import Sequence


def _ok(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


NONFINITE = {"nan": "NaN", "inf": "+Inf", "-inf": "−Inf"}


def num(v: object, fmt: str = "{:.3g}", na: str = "N/A", nonfinite: bool = False) -> str:
    """`fmt` of v, or `na` when v is missing or not finite (with `nonfinite`, a recorded NaN/±Inf
    reads "✕ NaN", "✕ +Inf" or "✕ −Inf" instead)."""
    if _ok(v):
        return fmt.format(float(v))
    if nonfinite and isinstance(v, (int, float)):
        return f"✕ {NONFINITE[str(float(v))]}"
    return na


def spark_values(values: Sequence[float]) -> list[float]:
    """Sparkline data that keeps every point in place: a NaN/±Inf becomes the largest finite value
    (a full-height bar at its step, the chart's top edge), never a dropped point."""
    finite = [float(v) for v in values if math.isfinite(v)]
    top = max(finite) if finite else 0.0
    return [float(v) if math.isfinite(v) else top for v in values] or [0.0]


def nonfinite_note(steps: Sequence[int], values: Sequence[float], shown: int = 3) -> str:
    """"✕ NaN at step 90" (the first `shown` non-finite points, then "+N more"); "" when all are finite."""
    bad = [(int(s), NONFINITE[str(float(v))]) for s, v in zip(steps, values) if not math.isfinite(v)]
    if not bad:
        return ""
    parts = [f"{label} at step {step:,}" for step, label in bad[:shown]]
    more = f" +{len(bad) - shown} more" if len(bad) > shown else ""
    return "✕ " + ", ".join(parts) + more


def gib(used: object, total: object) -> str:
    """'4.0/8.0G', '65/75G' from bytes (either may be missing): one decimal under 10 GiB, none above,
    so an 80 GiB or 141 GiB card fits the rank table's 8 columns ('141/141G')."""
    if not _ok(used):
        return "N/A"

    def fmt(b: float) -> str:
        g = b / 2**30
        return f"{g:.1f}" if g < 9.95 else f"{g:.0f}"
    u = fmt(float(used))
    return f"{u}/{fmt(float(total))}G" if _ok(total) and float(total) > 0 else f"{u}G"
