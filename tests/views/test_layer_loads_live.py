"""`layer_loads` of a live run grows with it: after each poll the per-layer steps and counts equal
a fresh build over a newly opened run (numpy over the rows the test wrote), earlier results are not
changed by later rows, and rows that go back in steps make it start over, still equal."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from inspector.store.recorder import Recorder
from inspector.views.experts import layer_loads
from inspector.views.live import LiveRun

LAYERS, EXPERTS = 3, 16


def submit(rec: Recorder, step: int, rng: np.random.Generator, written: dict) -> None:
    counts = rng.integers(0, 50, (LAYERS, EXPERTS))
    for layer in range(LAYERS):
        written.setdefault(layer, []).append((step, counts[layer].copy()))
    mean = counts.mean(1)
    rec.submit("expert_load", {"step": step, "name": [f"layers.{i}.ffn.gate" for i in range(LAYERS)],
                               "layer": np.arange(LAYERS), "counts": counts, "imbalance": counts.max(1) / mean,
                               "cv": counts.std(1) / mean, "router_entropy": None, "dropped": 0, "aux_loss": None,
                               "bias": None}, LAYERS, step)


def expected(written: dict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per layer, the rows written so far sorted by step (stable), as numpy arrays."""
    out = {}
    for layer, rows in written.items():
        rows = sorted(rows, key=lambda r: r[0])
        out[layer] = (np.array([r[0] for r in rows]), np.stack([r[1] for r in rows]))
    return out


def same(loads, want) -> None:
    assert sorted(loads) == sorted(want)
    for layer, (steps, counts) in want.items():
        np.testing.assert_array_equal(loads[layer][0], steps)
        np.testing.assert_array_equal(loads[layer][1], counts)


def test_live_loads_grow_with_the_run_and_equal_a_fresh_build(tmp_path: Path, monkeypatch) -> None:
    from inspector.views import experts

    built: list[int] = []                      # rows each dense build went through
    dense = experts.dense_loads
    monkeypatch.setattr(experts, "dense_loads", lambda table, **kw: built.append(table.num_rows) or dense(table, **kw))
    rng = np.random.default_rng(0)
    written: dict = {}
    rec = Recorder(tmp_path / "run", name="moe-live", flush_interval=0.1)
    run = None
    try:
        history = []
        for lo, hi in ((0, 5), (5, 40), (40, 41), (41, 200)):   # small and large batches of new rows
            for step in range(lo, hi):
                submit(rec, step, rng, written)
            rec.flush()
            if run is None:
                run = LiveRun(tmp_path / "run")
            run.poll()
            built.clear()
            loads = layer_loads(run)
            assert built == [(hi - lo) * LAYERS]   # only the rows new since the last refresh
            same(loads, expected(written))
            same(layer_loads(LiveRun(tmp_path / "run")), expected(written))      # a fresh build agrees
            history.append((loads, expected(written)))
        for loads, want in history:             # what an earlier refresh returned is unchanged by later rows
            same(loads, want)
        for step in (150, 151):                 # steps recorded again (out of order): starts over, still right
            submit(rec, step, rng, written)
        rec.flush()
        run.poll()
        built.clear()
        same(layer_loads(run), expected(written))
        assert built == [2 * LAYERS, 202 * LAYERS]   # the new rows did not extend the layers: all rows again
    finally:
        rec.close()


def test_loads_folded_from_several_threads_at_once_stay_right(tmp_path: Path) -> None:
    """The dashboard's callbacks build layer loads on several threads at once (two Experts panels
    raised KeyError before the builder had a lock): every result equals a dense build of its table."""
    import threading

    from inspector.views.experts import dense_loads, _GrowingLoads, load_table

    rng = np.random.default_rng(1)
    written: dict = {}
    with Recorder(tmp_path / "run", name="moe-threads") as rec:
        for step in range(120):
            submit(rec, step, rng, written)
    table = load_table(LiveRun(tmp_path / "run"), 0)
    growing, errors = _GrowingLoads(), []

    def worker(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            for _ in range(40):
                part = table.slice(0, int(r.integers(1, table.num_rows + 1)))
                got, want = growing.fold(part), dense_loads(part, summed=False)
                same(got, want)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
