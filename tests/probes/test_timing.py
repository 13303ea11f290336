"""The timing probe against known sleeps and the test's own perf_counter around each phase."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import inspector

FWD_S, BWD_S, DATA_S = 0.020, 0.030, 0.015
SLACK_MS = 15.0   # scheduling noise on a shared 2-core box; lower bounds are exact (sleep never returns early)



class _Sleep(torch.autograd.Function):
    """Identity that sleeps a known time in forward and in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fwd_s: float, bwd_s: float) -> torch.Tensor:  # type: ignore[override]
        time.sleep(fwd_s)
        ctx.bwd_s = bwd_s
        return x.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple:  # type: ignore[override]
        time.sleep(ctx.bwd_s)
        return g, None, None


class Block(nn.Module):
    def __init__(self, fwd_s: float, bwd_s: float) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.fwd_s, self.bwd_s = fwd_s, bwd_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sleep first: a checkpoint recompute must run it to reach the Linear's saved tensors
        return torch.relu(self.lin(_Sleep.apply(x, self.fwd_s, self.bwd_s)))


class Net(nn.Module):
    """Three blocks; only block 1 sleeps."""

    def __init__(self, checkpointing: bool | str = False) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.layers = nn.ModuleList([Block(0.0, 0.0), Block(FWD_S, BWD_S), Block(0.0, 0.0)])
        self.head = nn.Linear(8, 1)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = checkpoint(layer, x, use_reentrant=self.checkpointing == "reentrant") if self.checkpointing \
                else layer(x)
        return self.head(x)


def _table(run: Path) -> pd.DataFrame:
    df = inspector.open_run(run).to_pandas("timing")
    return df.pivot_table(index="step", columns=["name", "phase"], values="ms")


def test_phases_match_known_sleeps_and_the_loops_own_clock(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = inspector.watch(model, tmp_path / "run", probes=["timing"], optimizer=opt)
    measured: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "data": [], "total": []}
    step_ends = [time.perf_counter()]
    for _ in range(4):
        time.sleep(DATA_S)
        x = torch.randn(4, 8)
        t0 = time.perf_counter()
        out = model(x)
        t1 = time.perf_counter()
        loss = out.pow(2).mean()
        opt.zero_grad()
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        measured["forward"].append((t1 - t0) * 1e3)
        measured["backward"].append((t3 - t2) * 1e3)
        measured["optimizer"].append((t4 - t3) * 1e3)
        measured["data"].append((t0 - step_ends[-1]) * 1e3)
        measured["total"].append((t4 - step_ends[-1]) * 1e3)
        step_ends.append(t4)
    w.close()
    t = _table(tmp_path / "run")
    assert list(t.index) == [0, 1, 2, 3]

    fwd, bwd = t[("layers.1", "forward")].to_numpy(), t[("layers.1", "backward")].to_numpy()
    # at least the sleep, at most what the loop's own clock saw around the whole model's call (a
    # bound no load on the machine can break, unlike "the sleep plus some slack")
    assert (fwd >= FWD_S * 1e3).all() and (fwd <= np.array(measured["forward"]) + 0.5).all()
    assert (bwd >= BWD_S * 1e3).all() and (bwd <= np.array(measured["backward"]) + 0.5).all()
    assert (t[("layers.0", "backward")] < BWD_S * 1e3).all() and (t[("layers.2", "forward")] < FWD_S * 1e3).all()

    # the model's totals sit inside the loop's own measurements of the same calls
    for phase, name in (("forward", "model"), ("backward", "model"), ("optimizer", "optimizer")):
        rec, own = t[(name, phase)].to_numpy(), np.array(measured[phase])
        assert (rec <= own + 0.5).all() and (own - rec).min() < SLACK_MS, (phase, rec, own)
    assert (t[("model", "backward")] >= BWD_S * 1e3).all()
    # data: from the previous step's end to this step's first forward (none on the first step)
    assert np.isnan(t[("data", "data")].iloc[0])
    data = t[("data", "data")].iloc[1:].to_numpy()
    assert (data >= DATA_S * 1e3).all() and (np.abs(data - np.array(measured["data"][1:]))).min() < SLACK_MS
    # the parts add up to the step's wall time, which matches the loop's step-to-step time
    parts = t[[("model", "forward"), ("model", "backward"), ("optimizer", "optimizer"), ("data", "data"),
               ("step", "other")]].fillna(0).sum(axis=1)
    np.testing.assert_allclose(parts, t[("step", "total")], atol=1e-6)
    total = t[("step", "total")].iloc[1:].to_numpy()
    # (the first step's end also pays for lazy first-use work: compare the typical step)
    assert np.median(np.abs(total - np.array(measured["total"][1:]))) < SLACK_MS


def test_gradient_accumulation_adds_up_and_a_shared_backward_counts_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    w = inspector.watch(model, tmp_path / "run", probes=["timing"])
    own_bwd = []
    for _ in range(2):
        losses = [model(torch.randn(2, 8)).sum() for _ in range(2)]   # two forwards, one backward
        t0 = time.perf_counter()
        (losses[0] + losses[1]).backward()
        own_bwd.append((time.perf_counter() - t0) * 1e3)
        w.step()
    w.close()
    t = _table(tmp_path / "run")
    assert (t[("layers.1", "forward")] >= 2 * FWD_S * 1e3).all()
    assert (t[("layers.1", "backward")] >= 2 * BWD_S * 1e3).all()
    assert (t[("model", "backward")] >= 2 * BWD_S * 1e3).all()
    assert (t[("model", "backward")].to_numpy() <= np.array(own_bwd) + 0.5).all()   # overlap merged
    assert ("optimizer", "optimizer") not in t.columns


def test_sampled_steps_and_inplace_ops_after_a_block(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 1))
    x = torch.randn(3, 4)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    w = inspector.watch(model, tmp_path / "run", probes=["timing"], every={"timing": 2})
    for _ in range(5):
        model.zero_grad()
        out = model(x)
        out.sum().backward()
        w.step()
    w.close()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    df = inspector.open_run(tmp_path / "run").to_pandas("timing")
    assert sorted(set(df["step"])) == [0, 2, 4]
    names = set(zip(df["name"], df["phase"]))
    assert {("0", "forward"), ("0", "backward"), ("1", "backward"), ("2", "forward")} <= names
    assert ("data", "data") in set(zip(df[df["step"] == 2]["name"], df[df["step"] == 2]["phase"]))
    assert (df["ms"].dropna() >= 0).all()


def test_close_removes_every_hook(tmp_path: Path) -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    inspector.watch(model, tmp_path / "run", probes=["timing"], optimizer=opt).close()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # noqa: SLF001
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks  # noqa: SLF001


@pytest.mark.parametrize("mode", ["non-reentrant", "reentrant"])
def test_activation_checkpoint_recompute_is_backward_not_forward(tmp_path: Path, mode: str) -> None:
    torch.manual_seed(0)
    model = Net(checkpointing=mode)
    w = inspector.watch(model, tmp_path / "run", probes=["timing"])
    for _ in range(3):
        model(torch.randn(2, 8)).sum().backward()     # backward re-runs every block's forward
        w.step()
    w.close()
    t = _table(tmp_path / "run")
    fwd, bwd = t[("layers.1", "forward")], t[("layers.1", "backward")]
    assert (fwd >= FWD_S * 1e3).all() and fwd.min() < FWD_S * 1e3 + SLACK_MS    # counted once, not twice
    assert (t[("model", "backward")] >= (FWD_S + BWD_S) * 1e3).all()            # recompute + backward
    # non-reentrant recomputes inside the block's backward; reentrant before its inner backward pass
    assert (bwd >= (FWD_S + BWD_S if mode == "non-reentrant" else BWD_S) * 1e3).all()
    assert bwd.min() < (FWD_S + BWD_S) * 1e3 + SLACK_MS


def test_engine_layers_are_the_blocks(tmp_path: Path) -> None:
    from inspector_engine.config import get_config
    from inspector_engine.model import Transformer

    torch.manual_seed(0)
    model = Transformer(get_config("debug")).train()
    w = inspector.watch(model, tmp_path / "run", probes=["timing"])
    model(torch.randint(0, 256, (2, 16))).logsumexp(-1).mean().backward()
    w.step()
    w.close()
    df = inspector.open_run(tmp_path / "run").to_pandas("timing")
    blocks = sorted({n for n in df["name"] if n.startswith("layers.")})
    assert blocks == ["layers.0", "layers.1"]                  # the layers, not layer 1's experts
    assert (df[df["name"].isin(blocks)]["ms"] > 0).all()


class _FakeEvent:
    """Stands in for torch.cuda.Event: stamps perf_counter at record(), remembers who waited on it."""

    waiters: set[str] = set()

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.t: float | None = None

    def record(self, stream: object = None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        _FakeEvent.waiters.add(threading.current_thread().name)

    def elapsed_time(self, end: "_FakeEvent") -> float:
        return (end.t - self.t) * 1e3


def test_cuda_event_path_waits_only_on_the_writer_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from inspector.probes.timing import _Clock

    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    _FakeEvent.waiters = set()
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = inspector.watch(model, tmp_path / "run", probes=["timing"], optimizer=opt)
    w.probes["timing"].clock = _Clock(torch.device("cuda", 0))    # events instead of perf_counter
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 8)).sum().backward()
        opt.step()
    w.close()
    assert _FakeEvent.waiters and threading.current_thread().name not in _FakeEvent.waiters
    t = _table(tmp_path / "run")
    assert (t[("layers.1", "forward")] >= FWD_S * 1e3).all() and (t[("layers.1", "backward")] >= BWD_S * 1e3).all()
    parts = t[[("model", "forward"), ("model", "backward"), ("optimizer", "optimizer"), ("data", "data"),
               ("step", "other")]].fillna(0).sum(axis=1)
    np.testing.assert_allclose(parts, t[("step", "total")], atol=1e-6)
