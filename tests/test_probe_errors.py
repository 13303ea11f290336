"""Nothing a probe or plugin raises reaches the training loop (issue 14, defect 2).

A real plugin (tests/plugin_that_raises.py), published through a real `inspector.plugins` entry
point, offers one probe that raises in each place a probe's code runs: module forward-pre, forward
and backward hooks, a tensor hook, a post-accumulate-grad hook, the autograd engine callback of a
`BackwardEnd`, optimizer step pre/post hooks, `on_step_end`, `attach`, `detach`, and a deferred
value resolved on the Recorder's writer thread. The engine's debug model trains with all of them and
the default probes: the losses and weights equal an unwatched run bit for bit, each failing probe
is said once and recorded once as a `probe_error` anomaly, its hooks are gone, and the other probes
(and the plugin's healthy one) keep recording.
"""
from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import inspector
from inspector.demo import RecordingCallback
from inspector.plugins import load_plugins
from inspector.probes import PROBE_SETS, PROBES, Probe
from tests import plugin_that_raises as plugin

STEPS = 4
RAISING = [cls.name for cls in plugin.RAISING]
HOOK_FAILURES = [n for n in RAISING if n not in ("raise_detach", "raise_writer")]
"""Probes that fail (and must be swept away) before training ends."""
SITES = {
    "raise_forward_pre": f"forward-pre hook on {plugin.BLOCK} (_Raising._raise)",
    "raise_forward": f"forward hook on {plugin.BLOCK} (_Raising._raise)",
    "raise_backward": f"backward hook on {plugin.BLOCK} (_Raising._raise)",
    "raise_tensor": "gradient hook on parameter embed.weight (_Raising._raise)",
    "raise_post_accumulate": "post-accumulate-grad hook on parameter embed.weight (_Raising._raise)",
    "raise_engine_callback": "end-of-backward callback (_Raising._raise)",
    "raise_optimizer_pre": "optimizer step pre-hook (_Raising._raise)",
    "raise_optimizer_post": "optimizer step post-hook (_Raising._raise)",
    "raise_step_end": "on_step_end",
    "raise_attach": "attach",
    "raise_detach": "detach",
    "raise_writer": "a record it submitted (writer thread)",
}
"""Where each probe's message says it failed."""


@pytest.fixture(scope="module")
def plugin_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The test plugin as an installed distribution with an `inspector.plugins` entry point."""
    site = tmp_path_factory.mktemp("site")
    dist = site / "raising_probes-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: raising_probes\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(f"[inspector.plugins]\nraising_probes = {plugin.__name__}:register\n")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        registry = load_plugins(reload=True)
        assert {p.name: p.ok for p in registry.plugins}.get("raising_probes") is True
        yield
    finally:
        sys.path.remove(str(site))
        for name in [*RAISING, plugin.Healthy.name]:
            PROBES.pop(name, None)
            for selection in PROBE_SETS.values():
                if name in selection:
                    selection.remove(name)
        load_plugins(reload=True)


class _Lines(logging.Handler):
    """Keeps every log line of the `inspector` logger at WARNING and above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Runs:
    """The unwatched and the watched training of the debug model, and what was seen along the way."""

    plain_losses: list[float]
    watched_losses: list[float]
    plain_params: dict[str, torch.Tensor]
    watched_params: dict[str, torch.Tensor]
    run_dir: Path
    lines: list[str]
    live_after_attach: list[str]
    live_at_end: list[str]
    guards_at_end: set[str]
    not_applicable: dict[str, str]
    block_means: dict[int, float] = field(default_factory=dict)


def _trainer() -> Any:
    from inspector_engine.config import get_config
    from inspector_engine.training import TrainConfig, Trainer

    cfg = TrainConfig(steps=STEPS, batch_size=2, seq_len=32, warmup_steps=1, eval_every=0, progress=False)
    return Trainer(get_config("debug"), cfg)


def _guard_owners(model: nn.Module, optimizer: torch.optim.Optimizer) -> set[str]:
    """Names of the probes whose guarded hooks are still registered on the model or optimizer."""
    dicts: list[dict] = [optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks]  # noqa: SLF001
    for m in model.modules():
        dicts += [m._forward_pre_hooks, m._forward_hooks, m._backward_hooks, m._backward_pre_hooks]  # noqa: SLF001
    for p in model.parameters():
        dicts += [getattr(p, "_backward_hooks", None) or {}, getattr(p, "_post_accumulate_grad_hooks", None) or {}]
    owners = {getattr(h, "__inspector_guard__", None) for d in dicts for h in d.values()}
    return {o.name for o in owners if isinstance(o, Probe)}


@pytest.fixture(scope="module")
def runs(plugin_installed: None, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = _trainer()
        for _ in range(STEPS):
            plain.train_step()
        plain.close()

        run_dir = tmp_path_factory.mktemp("probe_errors") / "run"
        handler = _Lines()
        logger = logging.getLogger("inspector")
        logger.addHandler(handler)
        plugin.CALLS.clear()
        trainer = _trainer()
        block_means: dict[int, float] = {}
        block = dict(trainer.model.named_modules())[plugin.BLOCK]
        block.register_forward_hook(  # the test's own capture, outside the Inspector
            lambda m, a, out: block_means.__setitem__(trainer.step, float(out.detach().double().mean())))
        try:
            probes = [*PROBE_SETS["default"], *RAISING, plugin.Healthy.name]
            watch = inspector.watch(trainer.model, run_dir, optimizer=trainer.optimizer, probes=probes)
            live_after_attach = list(watch.probes)
            trainer.callbacks.append(RecordingCallback(watch))
            for _ in range(STEPS):
                trainer.train_step()
            live_at_end = list(watch.probes)
            guards = _guard_owners(trainer.model, trainer.optimizer)
            watch.close()
            trainer.close()
        finally:
            logger.removeHandler(handler)
        return Runs([m["loss"] for m in plain.history], [m["loss"] for m in trainer.history],
                    {n: p.detach().clone() for n, p in plain.model.named_parameters()},
                    {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
                    run_dir, handler.lines, live_after_attach, live_at_end, guards, dict(watch.not_applicable),
                    block_means)
    finally:
        torch.set_num_threads(threads)


def test_training_is_bit_identical_to_an_unwatched_run(runs: Runs) -> None:
    assert len(runs.watched_losses) == STEPS
    assert runs.watched_losses == runs.plain_losses
    for name, p in runs.plain_params.items():
        assert torch.equal(runs.watched_params[name], p), name


@pytest.mark.parametrize("name", RAISING)
def test_a_failing_probe_is_said_once_recorded_once_and_run_once(runs: Runs, name: str) -> None:
    naming = [line for line in runs.lines if f"{name} probe" in line]
    assert len(naming) == 1, naming
    assert f"{name} probe switched off after an error in {SITES[name]}: PlantedError: planted in" in naming[0]
    anomalies = inspector.open_run(runs.run_dir).to_pandas("anomaly")
    mine = anomalies[(anomalies["kind"] == "probe_error") & (anomalies["module"] == name)]
    assert len(mine) == 1
    message = mine["message"].iloc[0]
    assert message.startswith(f"{name} probe switched off after an error in {SITES[name]}: PlantedError: planted in")
    want_step = {"raise_detach": STEPS}.get(name)
    if want_step is not None:
        assert mine["step"].iloc[0] == want_step
    elif name != "raise_writer":  # the writer thread's step depends on when it wrote
        assert mine["step"].iloc[0] == 0
    assert plugin.CALLS[name] == 1  # switched off: its code never ran again
    assert runs.not_applicable[name].startswith("switched off after an error in")


def test_failed_probes_are_detached_during_training_and_the_others_keep_their_hooks(runs: Runs) -> None:
    assert "raise_attach" not in runs.live_after_attach
    assert set(HOOK_FAILURES).isdisjoint(runs.live_at_end)
    assert set(HOOK_FAILURES).isdisjoint(runs.guards_at_end)
    assert {"gradients", "timing", "activations", plugin.Healthy.name} <= runs.guards_at_end
    assert {"gradients", "timing", plugin.Healthy.name, "raise_detach"} <= set(runs.live_at_end)


def test_the_other_probes_keep_recording(runs: Runs) -> None:
    run = inspector.open_run(runs.run_dir)
    norms = run.to_pandas("scalar", names=["grad_norm/global"])
    assert norms["step"].tolist() == list(range(STEPS))
    assert sorted(run.to_pandas("timing")["step"].unique()) == list(range(STEPS))
    assert run.to_pandas("scalar", names=["loss"])["value"].tolist() == pytest.approx(runs.plain_losses, rel=1e-6)
    healthy = run.to_pandas("scalar", names=["plugin/block_out_mean"]).sort_values("step")
    assert healthy["step"].tolist() == list(range(STEPS))
    np.testing.assert_allclose(healthy["value"].to_numpy(), [runs.block_means[s] for s in range(STEPS)], rtol=1e-5)
    kinds = set(run.to_pandas("anomaly")["kind"])
    assert "probe_error" in kinds
    assert pd.Series(run.to_pandas("anomaly").query("kind == 'probe_error'")["module"]).is_unique


def test_guard_keeps_the_hooks_value_and_the_modules_output_after_a_failure() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    plain = lin(x)

    class Doubler(Probe):
        name = "doubler"

        def hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            if self.fail:
                raise ValueError("no")
            return out * 2

    probe = Doubler()
    probe.fail = False
    handle = probe.track(lin.register_forward_hook(probe.hook))
    assert torch.equal(lin(x), plain * 2)          # the hook's value is returned
    probe.fail = True
    assert torch.equal(lin(x), plain)              # on failure the module's own output is kept
    assert probe.switched_off is not None and "ValueError: no" in probe.switched_off
    probe.fail = False
    assert torch.equal(lin(x), plain)              # switched off: the hook does nothing any more
    handle.remove()
    assert not lin._forward_hooks  # noqa: SLF001


def test_guarded_hooks_add_no_graph_break_under_compile() -> None:
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    class Hooks(Probe):
        name = "hooks"

        def pre(self, module: nn.Module, args: tuple) -> None:
            return None

        def post(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            return out + 0.0

    def compiled(guarded: bool) -> tuple[int, int, torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        probe = Hooks()
        for m in model:
            for handle in (m.register_forward_pre_hook(probe.pre), m.register_forward_hook(probe.post)):
                if guarded:
                    probe.track(handle)
        dynamo.reset()
        counters.clear()
        cm = torch.compile(model, backend="eager")
        outs = [cm(torch.full((3, 4), float(i))) for i in range(3)]
        return sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"], torch.stack(outs)

    raw_breaks, raw_graphs, raw_out = compiled(False)
    breaks, graphs, out = compiled(True)
    assert (breaks, graphs) == (raw_breaks, raw_graphs) == (0, 1)
    assert torch.equal(out, raw_out)
