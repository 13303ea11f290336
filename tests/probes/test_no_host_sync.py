"""No probe adds a host read-back (`.item()`, a CUDA sync on a GPU) to a training step.

Counted on CPU with torch's profiler (`aten::_local_scalar_dense`), against the same step with no
probe; every probe records on this step (every=1). The anomalies probe is left out: on CPU it reads
one flag per forward on purpose (free there); on CUDA it uses device flags read a step later.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import inspector
from inspector_engine.config import get_config
from inspector_engine.model import Transformer


def _host_reads_in_one_step(probes: list[str], run: Path) -> int:
    cfg = get_config("debug")
    tokens = torch.randint(0, cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters())
    w = inspector.watch(model, run, probes=probes, optimizer=opt, every=1)

    def step() -> None:
        out = model(tokens[:, :-1])
        logits = out[0] if isinstance(out, tuple) else out
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.step(loss=loss)

    step()  # warm-up: first sampled step (activation ranges, attention index caches)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    w.close()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")


@pytest.mark.parametrize("probe", ["timing", "attention", "activations", "gradients", "experts", "system"])
def test_probe_adds_no_host_read_back(tmp_path: Path, probe: str) -> None:
    baseline = _host_reads_in_one_step([], tmp_path / "none")
    assert _host_reads_in_one_step([probe], tmp_path / probe) == baseline
