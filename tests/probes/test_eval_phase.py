"""Evaluation is its own timing phase: a real engine run that evaluates every 5 steps, timed by the
test's own hooks, and toy models for the explicit `Watch.phase("eval")` and the edge cases."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import inspector
from tests.probes.test_timing import FWD_S, Net, _table

EVAL_EVERY, STEPS = 5, 11


class _OwnClock:
    """The test's own record of the engine run: every root forward (outermost hooks), which of them
    ran inside an evaluation (between the trainer's `on_step_end` and `on_eval`), and step ends."""

    def __init__(self) -> None:
        self.forwards: list[tuple[int, float, float, bool]] = []   # (watch step, start, end, eval?)
        self.eval_windows: dict[int, float] = {}                    # watch step -> eval wall ms
        self.step_ends: list[float] = []                            # optimizer step ends, in order
        self.in_eval = False
        self._t0 = 0.0
        self._eval_start = 0.0

    def pre(self, *_: object) -> None:
        self._t0 = time.perf_counter()

    def post(self, *_: object) -> None:
        self.forwards.append((len(self.step_ends), self._t0, time.perf_counter(), self.in_eval))

    def opt_end(self, *_: object) -> None:
        self.step_ends.append(time.perf_counter())

    def on_step_end(self, trainer: object, step: int, metrics: dict) -> None:
        if step % EVAL_EVERY == 0:            # the trainer evaluates right after this callback
            self.in_eval, self._eval_start = True, time.perf_counter()

    def on_eval(self, trainer: object, step: int, metrics: dict) -> None:
        self.eval_windows[len(self.step_ends)] = (time.perf_counter() - self._eval_start) * 1e3
        self.in_eval = False

    def forward_ms(self, step: int, evaluating: bool) -> float:
        return sum((b - a) * 1e3 for s, a, b, e in self.forwards if s == step and e == evaluating)


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, _OwnClock, Path]:
    from inspector_engine.config import get_config
    from inspector_engine.training import TrainConfig, Trainer

    run_dir = tmp_path_factory.mktemp("eval") / "run"
    trainer = Trainer(get_config("debug"), TrainConfig(steps=STEPS, batch_size=4, seq_len=32, warmup_steps=2,
                                                       eval_every=EVAL_EVERY, eval_batches=12, progress=False))
    own = _OwnClock()
    trainer.model.register_forward_pre_hook(own.pre)                # runs before the probe's pre hook
    w = inspector.watch(trainer.model, run_dir, optimizer=trainer.optimizer, probes=["timing"])
    trainer.model.register_forward_hook(own.post)                   # runs after the probe's post hook
    trainer.optimizer.register_step_post_hook(own.opt_end)          # after the Watch ends the step
    trainer.callbacks.append(own)
    trainer.run()
    w.close()
    return _table(run_dir), own, run_dir


def test_engine_eval_is_recorded_as_its_own_phase_on_the_steps_after_it(engine_run) -> None:
    t, own, _ = engine_run
    assert list(t.index) == list(range(STEPS))
    # evaluations after trainer steps 5 and 10 run in watch steps 5 and 10; the one after the last
    # step belongs to no step
    assert sorted(own.eval_windows) == [5, 10, STEPS]
    eval_ms = t[("model", "eval")]
    assert sorted(eval_ms.dropna().index) == [5, 10]
    for step in (5, 10):
        own_eval_forward = own.forward_ms(step, evaluating=True)
        assert own_eval_forward > 0
        # the eval span lies inside the test's eval window and covers its forwards
        assert eval_ms[step] <= own.eval_windows[step] + 0.5
        assert eval_ms[step] >= 0.5 * own_eval_forward


def test_engine_training_forward_data_and_total_leave_the_eval_out(engine_run) -> None:
    t, own, _ = engine_run
    fwd = t[("model", "forward")]
    for step in range(STEPS):
        # the probe's forward intervals nest inside the test's training forwards of that step
        assert fwd[step] <= own.forward_ms(step, evaluating=False) + 0.5, step
    blocks = t[[c for c in t.columns if c[0].startswith("layers.") and c[1] == "forward"]].sum(axis=1)
    assert (blocks <= fwd + 0.5).all()
    for step in (5, 10):
        # eval forwards alone took longer than the step's training forward: leaving them in would show
        assert own.forward_ms(step, evaluating=True) > own.forward_ms(step, evaluating=False)
        own_wall = (own.step_ends[step] - own.step_ends[step - 1]) * 1e3
        assert t[("step", "total")][step] <= own_wall - 0.5 * own.forward_ms(step, evaluating=True)
        assert t[("data", "data")][step] <= 0.5 * own.eval_windows[step]
    parts = t[[("model", "forward"), ("model", "backward"), ("optimizer", "optimizer"), ("data", "data"),
               ("step", "other")]].fillna(0).sum(axis=1)
    np.testing.assert_allclose(parts, t[("step", "total")], atol=1e-6)


def test_step_breakdown_shows_eval_apart_from_the_stacked_phases(engine_run) -> None:
    from inspector.views.live import open_live
    from inspector.views.timing import EVAL, PHASES, step_breakdown

    t, _, run_dir = engine_run
    df = step_breakdown(open_live(run_dir), rank=0).set_index("step")
    np.testing.assert_allclose(df[EVAL].to_numpy(), t[("model", "eval")].fillna(0).to_numpy())
    np.testing.assert_allclose(df[list(PHASES)].sum(axis=1).to_numpy(), df["total"].to_numpy(), atol=1e-6)
    assert EVAL not in PHASES


class _ToyLoop:
    """A toy training loop on the sleeping `Net`, timing its own training forwards and step ends
    (the optimizer post hook is registered after the Watch's, so the probe's step lies inside)."""

    def __init__(self, tmp_path: Path, model: Net) -> None:
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01)
        self.watch = inspector.watch(model, tmp_path / "run", probes=["timing"], optimizer=self.opt)
        self.opt.register_step_post_hook(lambda *_: self.step_ends.append(time.perf_counter()))
        self.train_forward_ms: list[float] = []
        self.step_ends: list[float] = []

    def train_step(self) -> None:
        self.opt.zero_grad()
        t0 = time.perf_counter()
        out = self.model(torch.randn(4, 8))
        self.train_forward_ms.append((time.perf_counter() - t0) * 1e3)
        out.pow(2).mean().backward()
        self.opt.step()

    def wall_ms(self, step: int) -> float:
        return (self.step_ends[step] - self.step_ends[step - 1]) * 1e3


def test_explicit_phase_marks_an_eval_the_probe_cannot_detect(tmp_path: Path) -> None:
    torch.manual_seed(0)
    loop = _ToyLoop(tmp_path, Net())
    own_phase = []
    for step in range(4):
        if step == 2:                      # train mode, grad on, no backward: only the phase tells
            t0 = time.perf_counter()
            with loop.watch.phase("eval"):
                loop.model(torch.randn(4, 8))
                time.sleep(FWD_S)
            own_phase.append((time.perf_counter() - t0) * 1e3)
        loop.train_step()
    with pytest.raises(ValueError):
        with loop.watch.phase("warmup"):
            pass
    loop.watch.close()
    t = _table(tmp_path / "run")
    assert list(t[("model", "eval")].dropna().index) == [2]
    assert 2 * FWD_S * 1e3 <= t[("model", "eval")][2] <= own_phase[0] + 0.5   # the sleeping forward + the sleep
    # the step's forwards (model and block) nest inside the loop's own training forward alone
    own_forward = np.array(loop.train_forward_ms)
    assert (t[("model", "forward")].to_numpy() <= own_forward + 0.5).all()
    assert (t[("layers.1", "forward")].to_numpy() <= own_forward + 0.5).all()
    assert t[("step", "total")][2] <= loop.wall_ms(2) - 2 * FWD_S * 1e3


def test_training_in_eval_mode_is_training_and_an_unused_eval_mode_forward_is_eval(tmp_path: Path) -> None:
    torch.manual_seed(0)
    loop = _ToyLoop(tmp_path, Net().eval())     # trains with dropout off: forward + backward every step
    for step in range(4):
        if step == 2:
            loop.model(torch.randn(4, 8))        # eval mode, grad on, never backpropagated: eval
        loop.train_step()
    loop.watch.close()
    t = _table(tmp_path / "run")
    assert (t[("model", "forward")] >= FWD_S * 1e3).all()
    assert (t[("layers.1", "forward")].to_numpy() <= np.array(loop.train_forward_ms) + 0.5).all()
    assert list(t[("model", "eval")].dropna().index) == [2]
    assert t[("model", "eval")][2] >= FWD_S * 1e3


def test_an_inference_loop_keeps_its_forwards_as_forward_time(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net().eval()
    w = inspector.watch(model, tmp_path / "run", probes=["timing"])
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 8))
            w.step()
    w.close()
    t = _table(tmp_path / "run")
    assert ("model", "eval") not in t.columns
    assert (t[("model", "forward")] >= FWD_S * 1e3).all()
    assert (t[("step", "total")] >= FWD_S * 1e3).all()
