"""`inspector.watch` on plain torch models: steps, scalars, optimizer hook, clean close."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import inspector


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def test_step_records_scalars_and_model_summary(tmp_path: Path) -> None:
    model = _mlp()
    w = inspector.watch(model, tmp_path / "run", name="mlp-run")
    for i in range(5):
        loss = model(torch.ones(2, 4)).pow(2).mean()
        assert w.step(loss=loss, lr=0.1) == i
    inspector.log_scalar("custom", 7.0)
    w.close()
    r = inspector.open_run(tmp_path / "run")
    df = r.to_pandas("scalar", names=["loss"])
    assert df["step"].tolist() == [0, 1, 2, 3, 4]
    assert r.to_pandas("scalar", names=["custom"])["step"].tolist() == [5]
    assert r.meta.name == "mlp-run"
    assert r.meta.model["parameters"] == sum(p.numel() for p in model.parameters())
    assert r.meta.model["class"].endswith("Sequential")


def test_optimizer_hook_advances_steps_and_is_removed_on_close(tmp_path: Path) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = inspector.watch(model, tmp_path / "run", optimizer=opt)
    for _ in range(3):
        opt.zero_grad()
        loss = model(torch.ones(2, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        w.step(loss=loss)
    assert w.global_step == 3
    w.close()
    assert not opt._optimizer_step_post_hooks  # noqa: SLF001 — the only way to see torch's hooks
    r = inspector.open_run(tmp_path / "run")
    assert r.to_pandas("scalar", names=["loss"])["step"].tolist() == [0, 1, 2]


def test_outputs_are_bit_identical_after_close(tmp_path: Path) -> None:
    model = _mlp()
    x = torch.randn(3, 4)
    before = model(x)
    inspector.watch(model, tmp_path / "run").close()
    assert torch.equal(model(x), before)
    assert not model._forward_hooks and not model._forward_pre_hooks  # noqa: SLF001


def test_log_scalar_without_a_run_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="no active run"):
        inspector.log_scalar("x", 1.0)


def test_unknown_probe_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="probes must be one of"):
        inspector.watch(_mlp(), tmp_path / "run", probes="everything")


def test_ranks_come_from_torchrun_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with inspector.watch(_mlp(), tmp_path / "run") as w:
        w.step(loss=1.0)
    assert (tmp_path / "run" / "rank-00003").is_dir()
    assert not (tmp_path / "run" / "run.json").exists()  # only rank 0 writes run metadata
    import json
    info = json.loads((tmp_path / "run" / "rank-00003" / "rank.json").read_text())
    assert (info["rank"], info["local_rank"], info["world_size"]) == (3, 1, 4)


def test_watch_on_a_read_only_filesystem_trains_on_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = inspector.watch(model, run_dir="/proc/inspector-read-only/run")   # /proc refuses new directories
    x = torch.randn(8, 4)
    for _ in range(3):
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        w.step(loss=loss)
    w.close()
    assert caplog.text.count("recording to /proc/inspector-read-only/run stopped") == 1


def _train(model: nn.Module, steps: int, watch_dir: Path | None = None, *, break_probe: str | None = None):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = inspector.watch(model, watch_dir, optimizer=opt) if watch_dir is not None else None
    if w is not None and break_probe is not None:
        def broken(*_: object) -> None:
            raise RuntimeError("a probe bug")
        w.probes[break_probe].on_step_end = broken
        w.probes[break_probe].on_scalars = broken
    torch.manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        loss = model(torch.randn(4, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        if w is not None:
            w.step(loss=loss)
    if w is not None:
        w.close()
    return [p.detach().clone() for p in model.parameters()], w


def test_a_probe_that_raises_at_step_end_is_switched_off_and_training_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plain, _ = _train(_mlp(), 4)
    watched, w = _train(_mlp(), 4, tmp_path / "run", break_probe="gradients")
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))     # the model computed the same
    assert "gradients" not in w.probes and "a probe bug" in w.not_applicable["gradients"]
    assert caplog.text.count("gradients probe switched off") == 1
    steps = inspector.open_run(tmp_path / "run").to_pandas("scalar", names=["loss"])["step"].tolist()
    assert steps == [0, 1, 2, 3]


def test_scalars_are_recorded_as_of_the_call_not_after_the_loop_changes_them(tmp_path: Path) -> None:
    model = _mlp()
    w = inspector.watch(model, tmp_path / "run", probes=[])
    tr_loss = torch.zeros(())
    for step in range(3):
        tr_loss += 1.5 + step            # accumulate as Hugging Face Trainer does ...
        w.step(loss=tr_loss)
        tr_loss -= tr_loss               # ... then reset it in place right after logging
        w.log("after_reset", tr_loss)
    w.close()
    df = inspector.open_run(tmp_path / "run").to_pandas("scalar")
    assert df[df["name"] == "loss"].sort_values("step")["value"].tolist() == [1.5, 2.5, 3.5]
    assert df[df["name"] == "after_reset"]["value"].tolist() == [0.0, 0.0, 0.0]


def test_inspector_watch_still_watches_after_its_module_is_imported(tmp_path: Path) -> None:
    """`from inspector.watch import Watch` binds `inspector.watch` to the module (Python sets a
    package's attribute to an imported submodule); calling it must still start a watch."""
    import subprocess
    import sys

    code = ("import torch, inspector\n"
            "from inspector.watch import Watch\n"
            f"w = inspector.watch(torch.nn.Linear(2, 2), {str(tmp_path / 'run')!r}, hang_after_s=None)\n"
            "assert isinstance(w, Watch), type(w)\n"
            "w.close()\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
