"""A real run with non-finite steps and gradient clipping, for the views / dashboard / TUI tests.

The engine's debug model trained by a plain loop (AdamW, `clip_grad_norm_` to `CLIP`), recorded
with the gradients probe (every step) and the weight_norm plugin (every 10th step). At `SKIPPED`
a forward hook puts a NaN into `layers.0.ffn`'s output: loss and gradients are NaN and the loop
skips that optimizer step (as trainers that skip non-finite steps do). At `POISONED` the same NaN
is applied: the weights are NaN from then on, so the loss and the weight norms at `LAST` are too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

CLIP = 1.0
SKIPPED = 8
POISONED = 16
LAST = 20


@dataclass
class Recorded:
    """What the loop saw: the loss and what `clip_grad_norm_` returned, per step."""

    loss: np.ndarray
    pre_clip: np.ndarray


def write_nonfinite_run(path: Path) -> Recorded:
    """Train `LAST + 1` steps into `path`; see the module docstring."""
    import inspector
    from inspector_engine.config import get_config
    from inspector_engine.model import Transformer

    torch.manual_seed(0)
    cfg = get_config("debug")
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    step_box = [0]

    def poison(module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor | None:
        if step_box[0] in (SKIPPED, POISONED):
            out = out.clone()
            out.view(-1)[0] = float("nan")
            return out
        return None

    model.layers[0].ffn.register_forward_hook(poison)
    gen = torch.Generator().manual_seed(0)
    losses, norms = [], []
    with inspector.watch(model, path, probes=["gradients", "weight_norm"], every={"gradients": 1}) as w:
        for step in range(LAST + 1):
            step_box[0] = step
            tokens = torch.randint(0, cfg.vocab_size, (2, 33), generator=gen)
            logits = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), tokens[:, 1:].reshape(-1))
            loss.backward()
            norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
            if step != SKIPPED:
                opt.step()
            losses.append(float(loss.detach()))
            w.step(loss=loss)
            opt.zero_grad()
    return Recorded(np.array(losses), np.array(norms))
