"""`ranks.others_stats` (one sort per step) against the plain per-rank computation it replaces:
np.delete the rank's column, then nanmedian / nanmax / nanmin of the rest, on matrices with missing
values, ties and ranks alone at a step."""
from __future__ import annotations

import numpy as np
import pytest

from inspector.views.ranks import others_stats


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_per_rank_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    S, R = int(rng.integers(1, 30)), int(rng.integers(2, 40))
    m = rng.integers(0, 6, size=(S, R)).astype(float) if seed % 2 else rng.normal(100, 10, size=(S, R))
    m[rng.random((S, R)) < 0.2] = np.nan
    m[0, :] = np.nan
    m[0, 0] = 5.0                                     # a rank alone at a step: nothing to compare with
    med, top, low, count = others_stats(m)
    for r in range(R):
        others = np.delete(m, r, axis=1)
        n = np.isfinite(others).sum(axis=1)
        assert (count[:, r] == n).all()
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning) if (n == 0).any() else _nothing():
            ref = np.nanmedian(others, axis=1), np.nanmax(others, axis=1), np.nanmin(others, axis=1)
        for got, want in zip((med[:, r], top[:, r], low[:, r]), ref):
            np.testing.assert_allclose(got, want, equal_nan=True)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
