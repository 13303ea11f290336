"""Text bars: the forward/backward/optimizer share bar and per-expert load bars."""
from __future__ import annotations

from typing import Mapping

import numpy as np
from rich.text import Text

PHASE_COLOURS = {"forward": "#4c9be8", "backward": "#e8914c", "optimizer": "#5cc46a", "other": "#9a9a9a"}
_EIGHTHS = " ▁▂▃▄▅▆▇█"


def share_bar(shares: Mapping[str, float], width: int) -> Text:
    """A one-line stacked bar of phase fractions, followed by a legend with percentages."""
    text = Text()
    total = sum(max(v, 0.0) for v in shares.values()) or 1.0
    used = 0
    items = [(k, max(v, 0.0) / total) for k, v in shares.items()]
    for i, (name, frac) in enumerate(items):
        n = width - used if i == len(items) - 1 else int(round(frac * width))
        n = max(0, min(n, width - used))
        text.append("█" * n, style=PHASE_COLOURS.get(name, "white"))
        used += n
    text.append("\n")
    for name, frac in items:
        text.append("■ ", style=PHASE_COLOURS.get(name, "white"))
        text.append(f"{name} {frac * 100:.0f}%  ")
    return text


def column_bars(counts: np.ndarray, height: int, top: float | None = None, style: str = "#4c9be8") -> Text:
    """Vertical bars, one character column per value, `height` lines tall, scaled to `top` (default max)."""
    counts = np.asarray(counts, dtype=np.float64)
    top = float(counts.max()) if top is None and counts.size else (top or 0.0)
    levels = np.zeros_like(counts) if top <= 0 else counts / top * height * 8
    text = Text()
    for line in range(height, 0, -1):
        base = (line - 1) * 8
        row = "".join(_EIGHTHS[int(np.clip(round(v - base), 0, 8))] for v in levels)
        text.append(row, style=style)
        if line > 1:
            text.append("\n")
    return text
