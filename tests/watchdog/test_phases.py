"""Phase and module tracking on a real model: what `Progress` says at each point of a training step,
seen from inside the model, the data set, the loss and the optimizer (spies that read the Watch's
`progress` when they run), and the data loader patch's reference counting."""
from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, Dataset
from torch.utils.data import dataloader as dl_module

import inspector
from inspector.store.reader import RunReader

SEEN: list[tuple[str, str, str]] = []   # (where, phase, module)
CURRENT: dict[str, Any] = {}            # "progress": the Progress the spies read


def spy(where: str) -> None:
    p = CURRENT["progress"]
    SEEN.append((where, p.phase, p.module))


class Spy(torch.autograd.Function):
    """Identity; records the phase when its forward and its backward run."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, where: str) -> torch.Tensor:  # type: ignore[override]
        ctx.where = where
        spy(f"{where}:forward")
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        spy(f"{ctx.where}:backward")
        return grad, None


class Block(nn.Module):
    """A residual MLP block with a spy after its linear layer."""

    def __init__(self, name: str, recompute: bool = False) -> None:
        super().__init__()
        self.name = name
        self.recompute = recompute
        self.fc = nn.Linear(8, 8)

    def _inner(self, x_BD: torch.Tensor) -> torch.Tensor:
        return x_BD + torch.tanh(Spy.apply(self.fc(x_BD), self.name))

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(self._inner, x_BD, use_reentrant=False)
        return self._inner(x_BD)


class Net(nn.Module):
    """Two blocks (the second one activation-checkpointed when asked) and a head."""

    def __init__(self, recompute: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block("b0"), Block("b1", recompute)])
        self.head = nn.Linear(8, 1)

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x_BD = layer(x_BD)
        return self.head(x_BD)


class Points(Dataset):
    """Random points; `__getitem__` records the phase."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        spy("getitem")
        return torch.full((8,), float(i) / 8), torch.ones(1)


class SpySGD(torch.optim.SGD):
    """SGD that records the phase inside `step`."""

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        spy("optimizer.step")
        return super().step(closure)


def _train_one_step(tmp_path, recompute: bool = False) -> list[tuple[str, str, str]]:
    SEEN.clear()
    torch.manual_seed(0)
    model = Net(recompute)
    opt = SpySGD(model.parameters(), lr=0.1)
    w = inspector.watch(model, tmp_path, optimizer=opt, probes="none", hang_after_s=None)
    CURRENT["progress"] = w.progress
    try:
        spy("start")
        x_BD, y_B1 = next(iter(DataLoader(Points(), batch_size=4)))
        spy("after data")
        loss = F.mse_loss(model(x_BD), y_B1)
        spy("loss")
        loss.backward()
        spy("after backward")
        opt.step()
        spy("after optimizer")
        opt.zero_grad()
        w.step(loss=loss.detach())
        spy("after step")
        with w.phase("eval"), torch.no_grad():
            model(x_BD)
            spy("in eval")
        with w.phase("checkpoint"):
            spy("in checkpoint")
        spy("after checkpoint")
    finally:
        w.close()
    spy("closed")
    return list(SEEN)


def test_phases_of_a_step_in_order(tmp_path) -> None:
    seen = _train_one_step(tmp_path)
    assert seen == [
        ("start", "user", ""),
        *[("getitem", "data", "")] * 4,
        ("after data", "user", ""),
        ("b0:forward", "forward", "layers.0"),
        ("b1:forward", "forward", "layers.1"),
        ("loss", "user", ""),
        # backward: the block whose gradient is being computed, last block first
        ("b1:backward", "backward", "layers.1"),
        ("b0:backward", "backward", "layers.0"),
        ("after backward", "user", ""),
        ("optimizer.step", "optimizer", ""),
        ("after optimizer", "user", ""),
        ("after step", "user", ""),
        ("b0:forward", "eval", "layers.0"),
        ("b1:forward", "eval", "layers.1"),
        ("in eval", "eval", ""),
        ("in checkpoint", "checkpoint", ""),
        ("after checkpoint", "user", ""),
        ("closed", "closed", ""),
    ]


def test_recomputed_forward_stays_backward(tmp_path) -> None:
    """An activation-checkpointed block's forward recomputed during backward is backward time."""
    seen = _train_one_step(tmp_path, recompute=True)
    i = seen.index(("loss", "user", ""))
    assert seen[i + 1:i + 4] == [("b1:forward", "backward", "layers.1"),    # the recomputation
                                 ("b1:backward", "backward", "layers.1"),
                                 ("b0:backward", "backward", "layers.0")]


def test_step_counted_and_progress_stamped(tmp_path) -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = inspector.watch(model, tmp_path, optimizer=opt, probes="none", hang_after_s=None)
    try:
        stamps = []
        for _ in range(3):
            before = w.progress.last_progress
            model(torch.randn(2, 8)).sum().backward()
            stamps.append(w.progress.last_progress >= before)
            opt.step()
            opt.zero_grad()
        assert w.progress.step == 3 == w.global_step
        assert all(stamps)
    finally:
        w.close()


def test_unknown_phase_refused(tmp_path) -> None:
    w = inspector.watch(Net(), tmp_path, probes="none", hang_after_s=None)
    try:
        with pytest.raises(ValueError, match="unknown phase"):
            with w.phase("lunch"):
                pass
    finally:
        w.close()


def test_data_loader_patch_is_reference_counted(tmp_path) -> None:
    original = dl_module._BaseDataLoaderIter.__next__
    a = inspector.watch(Net(), tmp_path / "a", probes="none", hang_after_s=None)
    b = inspector.watch(Net(), tmp_path / "b", probes="none", hang_after_s=None)
    assert dl_module._BaseDataLoaderIter.__next__ is not original
    seen = []

    class Probe(Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int) -> int:
            seen.append((a.progress.phase, b.progress.phase))
            return i

    next(iter(DataLoader(Probe())))
    a.close()
    assert dl_module._BaseDataLoaderIter.__next__ is not original   # b still open
    next(iter(DataLoader(Probe())))
    b.close()
    assert dl_module._BaseDataLoaderIter.__next__ is original
    assert seen == [("data", "data"), ("closed", "data")]


def test_a_failing_hook_is_switched_off_not_raised(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the phase tracking never reaches training: the tracking is switched off (a
    `probe_error` anomaly naming the watchdog) and the step's gradients are the unwatched ones."""
    from inspector.watchdog import phase_hooks

    def broken(self: Any, module: str) -> None:
        raise RuntimeError("boom")

    torch.manual_seed(0)
    ref, model = Net(), Net()
    model.load_state_dict(ref.state_dict())
    x_BD = torch.randn(4, 8)
    ref(x_BD).sum().backward()
    monkeypatch.setattr(phase_hooks.PhaseHooks, "_backward_started", broken)
    w = inspector.watch(model, tmp_path, probes="none", hang_after_s=None)
    try:
        model(x_BD).sum().backward()
        w.step()
    finally:
        w.close()
    for p_ref, p in zip(ref.parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=0, atol=0)
    anomalies = RunReader(tmp_path).to_pandas("anomaly")
    errors = anomalies[anomalies["kind"] == "probe_error"]
    assert len(errors) == 1 and "watchdog" in errors["message"].iloc[0] and "boom" in errors["message"].iloc[0]


def test_inference_watch_names_the_running_block_without_backward_hooks(tmp_path) -> None:
    """Under an inference watch the watchdog still says which block a forward is in (a serving hang
    names its layer), but hooks no block output: no backward runs there, and each hook costs a decode
    iteration time."""
    SEEN.clear()
    model = Net().eval()
    w = inspector.watch(model, tmp_path, mode="inference", probes=[], hang_after_s=None)
    CURRENT["progress"] = w.progress
    try:
        with torch.no_grad():
            model(torch.randn(2, 8))
        assert [(where, module) for where, _, module in SEEN] == [("b0:forward", "layers.0"), ("b1:forward", "layers.1")]
        assert all(not block._forward_hooks for block in model.layers)
    finally:
        w.close()
