"""`starved_at_end` (one pass over each expert's last token) equals the last row of `starved_mask`."""
from __future__ import annotations

import numpy as np

from inspector.views import summary as S


def test_starved_at_end_equals_the_masks_last_row() -> None:
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(400):
        n, e = int(rng.integers(1, 60)), int(rng.integers(1, 6))
        steps = np.sort(rng.choice(np.arange(0, 600), n, replace=False))
        counts = rng.integers(0, 3, (n, e)) * (rng.random((n, e)) < 0.3)
        starved, since = S.starved_mask(steps, counts)
        expected = {int(x): int(since[-1, x]) for x in np.flatnonzero(starved[-1])}
        assert S.starved_at_end(steps, counts) == expected
        found += bool(expected)
    assert found > 20                       # the cases exercise starvation, not only its absence


def test_tail_stretches_equal_the_whole_runs_over_long_stretches() -> None:
    """Stretches longer than the tail first looked at (`TAIL_ROWS`), and shorter ones: the tail-only
    verdicts of starved and hot experts equal `stretch_at_end` over every recorded step."""
    rng = np.random.default_rng(1)
    found = {"starved": 0, "hot": 0, "long": 0}
    for _ in range(150):
        n, e = int(rng.integers(1, 700)), int(rng.integers(2, 12))
        steps = np.sort(rng.choice(np.arange(0, 5000), n, replace=False))
        counts = rng.integers(1, 20, (n, e))
        for x in range(e):                            # some experts go empty or hot from a random row on
            start = int(rng.integers(0, n))
            if rng.random() < 0.3:
                counts[start:, x] = 0
            elif rng.random() < 0.3:
                counts[start:, x] = 40 * e
        whole_starved = S.stretch_at_end(steps, counts == 0)
        mean = counts.astype(float).mean(1, keepdims=True)
        whole_hot = S.stretch_at_end(steps, (counts >= S.HOT_FACTOR * mean) & (mean > 0))
        assert S.starved_at_end(steps, counts) == whole_starved
        assert S.hot_at_end(steps, counts) == whole_hot
        found["starved"] += bool(whole_starved)
        found["hot"] += bool(whole_hot)
        found["long"] += any(int(np.searchsorted(steps, s)) < n - S.TAIL_ROWS for s in whole_starved.values())
    assert min(found.values()) > 10, found
