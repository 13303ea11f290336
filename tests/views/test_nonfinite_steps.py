"""Non-finite steps stay in every view (series, heatmaps, weight norms), and the clip threshold is
inferred: on a real engine run with a skipped NaN step and NaN weights at the end
(tests/nonfinite_run.py). Oracles: what the training loop saw, and numpy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspector.views.downsample import downsample_indices, nonfinite_codes
from inspector.views.gradients import grad_heatmap, grad_lines, group_detail
from inspector.views.live import open_live
from inspector.views.series import clip_threshold, grad_norm_series, scalar_series
from inspector_plugins.weight_norm.render import latest_norms, weight_norm_codes, weight_norm_matrix
from tests.nonfinite_run import CLIP, LAST, POISONED, SKIPPED, Recorded, write_nonfinite_run

NAN_STEPS = [SKIPPED, *range(POISONED, LAST + 1)]


@pytest.fixture(scope="module")
def nf(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Recorded]:
    path = tmp_path_factory.mktemp("nonfinite") / "run"
    recorded = write_nonfinite_run(path)
    run = open_live(path)
    yield run, recorded
    run.close()


def test_the_loop_really_saw_the_non_finite_steps(nf) -> None:
    _, rec = nf
    assert np.flatnonzero(~np.isfinite(rec.loss)).tolist() == NAN_STEPS
    assert np.isfinite(rec.pre_clip[:SKIPPED]).all() and (rec.pre_clip[:SKIPPED] > CLIP).all()


@pytest.mark.parametrize("max_points", [2000, 4])
def test_loss_series_keeps_every_non_finite_run_even_downsampled(nf, max_points: int) -> None:
    run, rec = nf
    df = scalar_series(run, "loss", rank=0, max_points=max_points)
    got = dict(zip(df["step"].tolist(), df["value"].tolist()))
    for step in (SKIPPED, POISONED, LAST):  # each run of NaNs keeps its first and last step
        assert step in got and np.isnan(got[step])
    finite = {s: v for s, v in got.items() if np.isfinite(v)}
    np.testing.assert_allclose(list(finite.values()), rec.loss[list(finite)], rtol=1e-6)


def test_downsampling_keeps_every_isolated_nan_and_inf() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=20_000)
    bad = {1234: np.nan, 5000: np.inf, 5001: np.inf, 17_777: -np.inf, 19_999: np.nan}
    for i, v in bad.items():
        y[i] = v
    idx = downsample_indices(np.arange(y.size), y, 100)
    assert set(bad) <= set(idx.tolist())
    assert len(idx) <= 100 + len(bad)


def test_grad_norm_series_is_before_clipping_and_threshold_is_inferred(nf) -> None:
    run, rec = nf
    series = grad_norm_series(run, rank=0)
    pre = series["grad norm (before clipping)"]
    np.testing.assert_allclose(pre["value"].to_numpy(), rec.pre_clip[pre["step"].to_numpy()], rtol=1e-5)
    assert np.isnan(pre.set_index("step")["value"].loc[SKIPPED])  # kept, not dropped
    applied = series["applied (after clipping)"].set_index("step")["value"]
    np.testing.assert_allclose(applied.loc[:SKIPPED - 1], CLIP, rtol=1e-5)
    assert clip_threshold(run, rank=0) == pytest.approx(CLIP, rel=1e-5)


def test_gradient_heatmap_keeps_the_all_nan_step_and_marks_it(nf) -> None:
    run, _ = nf
    hm = grad_heatmap(run, "norm")
    steps = hm.steps.tolist()
    assert steps == list(range(LAST + 1))  # the gradients probe records every step here
    assert hm.nonfinite is not None
    col = steps.index(SKIPPED)
    assert (hm.nonfinite[:, col] == 1).all()              # every group NaN at the skipped step
    assert (hm.nonfinite[:, :SKIPPED] == 0).all() and np.isfinite(hm.z[:, :SKIPPED]).all()
    binned = grad_heatmap(run, "norm", max_steps=4)
    hit = np.searchsorted(binned.steps, SKIPPED, side="right") - 1
    assert binned.nonfinite is not None and (binned.nonfinite[:, hit] == 1).all()


def test_gradient_lines_and_detail_keep_the_nan_step(nf) -> None:
    run, _ = nf
    for df in grad_lines(run, "norm", max_points=4).values():
        assert SKIPPED in df["step"].tolist() and np.isnan(df.set_index("step")["value"].loc[SKIPPED])
    group = next(iter(grad_lines(run, "norm")))
    detail = group_detail(run, group, max_points=4).set_index("step")
    assert np.isnan(detail.loc[SKIPPED, "norm"])


def test_weight_norm_panel_keeps_the_nan_step(nf) -> None:
    run, _ = nf
    names, steps, mat = weight_norm_matrix(run)
    assert steps == [0, 10, 20]  # weights are NaN from POISONED on: step 20's norms are NaN, not dropped
    assert np.isfinite(mat[:, :2]).all() and np.isnan(mat[:, 2]).all()
    codes = weight_norm_codes(run)
    np.testing.assert_array_equal(codes, nonfinite_codes(mat))
    assert np.isnan(latest_norms(run, LAST)["norm"]).all()


def test_entropy_heatmap_keeps_a_step_whose_maps_are_all_non_finite(tmp_path: Path) -> None:
    from inspector.store.recorder import Recorder
    from inspector.views.attention import entropy_matrix, entropy_nonfinite

    written = np.full((5, 2, 2), 1.5)                 # [step, layer, head]
    written[2] = np.nan                               # every map non-finite: pivot_table dropped this step
    written[3, 1, 0] = np.inf
    with Recorder(tmp_path / "r", name="r") as rec:
        for s in range(5):
            rec.submit("attention_stats", {"name": [f"layers.{l}.attn" for l in (0, 0, 1, 1)],
                                           "layer": [0, 0, 1, 1], "head": [0, 1, 0, 1],
                                           "entropy": written[s].reshape(-1).tolist(), "max_weight": [0.5] * 4,
                                           "collapsed": [False] * 4}, 4, step=s)
    run = open_live(tmp_path / "r")
    labels, steps, z = entropy_matrix(run)
    assert labels == ["L0·H0", "L0·H1", "L1·H0", "L1·H1"] and steps == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(z, written.reshape(5, 4).T)
    codes = entropy_nonfinite(run)
    np.testing.assert_array_equal(codes, nonfinite_codes(written.reshape(5, 4).T, np.ones((4, 5), dtype=bool)))
    assert codes[:, 2].tolist() == [1, 1, 1, 1] and codes[2, 3] == 2 and codes.sum() == 6
