"""A real run with activations that drift: the engine's debug model trained a few steps while a forward
hook multiplies `layers.0.ffn`'s output by a growing factor, and the last step plants NaN/±inf.
Shared by the probe, view and dashboard tests; the test's own hooks capture every module output."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import inspector

DRIFT_MODULE = "layers.0.ffn"
DRIFT_FROM = 3
"""From this step on the module's output is multiplied by GROWTH ** (step - DRIFT_FROM + 1)."""
GROWTH = 3.0
STEPS = 10
NAN_STEP = STEPS - 1
NAN_MODULE = "layers.1.ffn"
PLANTED_NONFINITE = 3
"""NaN, +inf, -inf planted into NAN_MODULE's output at NAN_STEP (forward only: no update after it)."""


@dataclass
class DriftRun:
    """Where the run is and what the test's own hooks saw: captured[step][module] as float64."""

    path: Path
    modules: list[str]
    captured: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


def write_drift_run(path: Path) -> DriftRun:
    """Train the engine's debug model STEPS steps with the planted drift; activations sampled every step."""
    from inspector_engine.config import get_config
    from inspector_engine.model import Transformer
    from inspector.probes.activations import select_modules

    cfg = get_config("debug")
    torch.manual_seed(0)
    model = Transformer(cfg)
    mods = dict(model.named_modules())
    step = {"now": 0}

    def drift(module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor | None:
        if step["now"] < DRIFT_FROM:
            return None
        return out * GROWTH ** (step["now"] - DRIFT_FROM + 1)

    def plant_nan(module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor | None:
        if step["now"] != NAN_STEP:
            return None
        out = out.clone()
        flat = out.view(-1)
        flat[0], flat[1], flat[2] = float("nan"), float("inf"), -float("inf")
        return out

    mods[DRIFT_MODULE].register_forward_hook(drift)        # before the capture and the probe: both see it
    mods[NAN_MODULE].register_forward_hook(plant_nan)
    run = DriftRun(path, [n for n, _ in select_modules(model)])
    outs: dict[str, np.ndarray] = {}
    for name in run.modules:
        def capture(mod: nn.Module, args: object, out: object, name: str = name) -> None:
            t = out[0] if isinstance(out, tuple) else out
            outs[name] = t.detach().double().numpy().copy()
        mods[name].register_forward_hook(capture)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    w = inspector.watch(model, path, probes=["activations"], every={"activations": 1})
    gen = torch.Generator().manual_seed(0)
    for s in range(STEPS):
        step["now"] = s
        tokens = torch.randint(0, cfg.vocab_size, (2, 16), generator=gen)
        opt.zero_grad()
        loss = model(tokens).logsumexp(-1).mean()
        if s != NAN_STEP:
            loss.backward()
            opt.step()
        run.captured[s] = dict(outs)
        w.step()  # ends the step (no optimizer given to the watch)
    w.close()
    return run
