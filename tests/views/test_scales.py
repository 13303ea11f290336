"""Colour scales anchored to meaning (issue 13 item 5): entropy 0 … ln(keys), weights 0 … 1, counts
from 0, shares 0 … 1, load centred on the balanced 1×. Oracles: the key count the run was trained
with, numpy over what RunReader returns, hand-computed ramp positions."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from inspector.store.reader import RunReader
from inspector.views.attention import (entropy_matrix, entropy_matrix_scale, head_entropy_scale, head_stats,
                                       key_count_range)
from inspector.views.experts import expert_counts, expert_share_over_time
from inspector.views.live import open_live
from inspector.views.scales import (count_scale, entropy_scale, load_ratio, load_scale, share_scale,
                                    weight_scale)
from tests.watched_training import record_short_demo

ROOT = Path(__file__).resolve().parents[2]
SEQ = 24


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's recording path on the engine's debug config: 2 steps of 24 tokens (maps at step 0)."""
    return record_short_demo(tmp_path_factory.mktemp("scales") / "demo", SEQ)


def test_entropy_scale_spans_zero_to_ln_keys_on_a_demo_run(demo_run: Path) -> None:
    run = open_live(demo_run)
    labels, steps, z = entropy_matrix(run)
    assert labels and z.size
    assert key_count_range(run) == (SEQ, SEQ)
    scale = entropy_matrix_scale(run, z)
    assert scale.lo == 0.0 and scale.hi == pytest.approx(math.log(SEQ))
    assert scale.alarm == "low"                                       # collapse is the low end
    assert (scale.data_lo, scale.data_hi) == (pytest.approx(z.min()), pytest.approx(z.max()))
    assert f"ln {SEQ} keys" in scale.label and f"{math.log(SEQ):.3f}" in scale.label
    # A random-init head is nearly uniform: its whole spread is a sliver of the ramp, near the top.
    pos = scale.position(z)
    assert pos.max() - pos.min() < 1e-3
    assert pos.min() > 0.5


def test_head_stats_carry_the_key_count_of_their_maps(demo_run: Path) -> None:
    run = open_live(demo_run)
    stats = head_stats(run, step=0)
    with RunReader(demo_run) as reader:
        keys = {int(r["layer"]): reader.attention_map(step=0, layer=int(r["layer"])).shape[-1]
                for r in reader.blob_rows(step=0)}
    assert list(stats["keys"]) == [float(keys[int(layer)]) for layer in stats["layer"]]
    scale = head_entropy_scale(stats)
    assert scale.hi == pytest.approx(math.log(SEQ))
    assert stats.columns[:5].tolist() == ["layer", "head", "entropy", "max_weight", "collapsed"]


def test_differing_key_counts_use_the_largest_and_say_so() -> None:
    scale = entropy_scale(np.array([1.0, 2.0]), 64, min_keys=16)
    assert scale.hi == pytest.approx(math.log(64))
    assert "largest of 16–64" in scale.label
    unknown = entropy_scale(np.array([1.0, 2.0]), None)
    assert unknown.hi == 2.0 and "not recorded" in unknown.label
    # the demo's range, stated with enough digits to tell its ends apart
    assert "3.8773–3.8777 of max 4.159" in entropy_scale(np.array([3.87731, 3.87769]), 64).label


def test_weight_scale_is_zero_to_one_and_keeps_a_uniform_row_flat() -> None:
    row = np.full(128, 1 / 128)
    scale = weight_scale(np.vstack([row, np.eye(128)[0]]))
    assert (scale.lo, scale.hi) == (0.0, 1.0)
    pos = scale.position(row)
    assert np.ptp(pos) == 0.0
    np.testing.assert_allclose(pos, math.sqrt(1 / 128))               # √ ramp: visible, not stretched
    np.testing.assert_allclose(scale.value_at(scale.position([0.0, 0.01, 0.3, 1.0])), [0.0, 0.01, 0.3, 1.0])


def test_expert_counts_and_shares_are_anchored_at_zero_on_healthy_moe() -> None:
    run = open_live(ROOT / "sample_runs" / "healthy-moe")
    layers, counts = expert_counts(run, step=10**9)
    scale = count_scale(counts)
    assert scale.lo == 0.0 and scale.hi == counts.max()
    assert scale.data_lo == counts.min() > 0                         # no expert is starved here…
    assert scale.position(counts).min() > 0.3                        # …so none is drawn near the bottom
    assert f"balanced {counts.sum() / counts.size:,.0f}" in scale.label
    steps, share = expert_share_over_time(run, layer=layers[0])
    s = share_scale(share, share.shape[0])
    assert (s.lo, s.hi) == (0.0, 1.0) and "balanced 1/8 = 0.125" in s.label


def test_load_is_diverging_around_balanced() -> None:
    counts = np.array([[0, 50, 100, 250], [10, 10, 10, 10]])
    ratio = load_ratio(counts)
    np.testing.assert_allclose(ratio, counts / counts.mean(1, keepdims=True))
    scale = load_scale(ratio)
    assert (scale.lo, scale.centre, scale.hi) == (0.0, 1.0, 2.5)
    # by hand: 0 -> 0, 1× -> 0.5 (neutral), 2.5× -> 1, 0.5× -> 0.25, 1.75× -> 0.75
    np.testing.assert_allclose(scale.position([0, 1, 2.5, 0.5, 1.75]), [0, 0.5, 1, 0.25, 0.75])
    np.testing.assert_allclose(scale.value_at([0, 0.25, 0.5, 0.75, 1]), [0, 0.5, 1, 1.75, 2.5])
    assert load_scale(np.array([0.9, 1.1])).hi == 2.0                # at least 0 … 1× … 2×
