"""Step arithmetic shared by every per-step view."""
from __future__ import annotations

import bisect
from typing import Sequence


def nearest_at_or_before(steps: Sequence[int], step: int) -> int | None:
    """The largest recorded step ≤ `step` (the first one when `step` is before them all); None if none."""
    if not steps:
        return None
    i = bisect.bisect_right(steps, step)
    return steps[i - 1] if i else steps[0]
