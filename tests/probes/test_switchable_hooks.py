"""The attention probe's engine taps are hooked only on the steps it records: on the others the taps
have no forward hook at all (torch's fast call path), and the records are those of the sampled steps."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import inspector
from inspector.probes.attention.qk import is_qk_capture
from inspector_engine.config import get_config
from inspector_engine.model import Transformer


def _taps_hooked(model: torch.nn.Module) -> list[int]:
    return [len(m._forward_hooks) for m in model.modules() if is_qk_capture(m)]


def test_taps_are_hooked_on_sampled_steps_only_and_those_steps_are_recorded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    tokens = torch.randint(0, model.cfg.vocab_size, (1, 12))
    hooked = []
    with inspector.watch(model, tmp_path / "run", probes=["attention"], every={"attention": 3}) as w:
        n_taps = len(_taps_hooked(model))
        for _ in range(7):
            hooked.append(set(_taps_hooked(model)))
            with torch.no_grad():
                model(tokens)
            w.step()
    assert n_taps > 0
    assert hooked == [{1} if s % 3 == 0 else {0} for s in range(7)]
    assert set(_taps_hooked(model)) == {0}                                # closed: every hook gone
    steps = inspector.open_run(tmp_path / "run").to_pandas("attention_stats")["step"].unique().tolist()
    assert sorted(steps) == [0, 3, 6]


def test_a_failing_tap_hook_switches_the_probe_off_naming_the_tap(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from inspector.probes.attention import probe as attention_probe

    def broken(*_: object) -> None:
        raise RuntimeError("boom")
    monkeypatch.setattr(attention_probe.AttentionProbe, "idle", broken)     # outside the hook's own try
    model = Transformer(get_config("debug")).eval()
    tokens = torch.randint(0, model.cfg.vocab_size, (1, 8))
    with torch.no_grad():
        expected = model(tokens)
    with inspector.watch(model, tmp_path / "run", probes=["attention"]) as w:
        with torch.no_grad():
            out = model(tokens)
        w.step()
        why = w.not_applicable["attention"]
        assert "attention" not in w.probes and "boom" in why and "forward hook on layers.0.attn.qk_capture" in why, why
        assert set(_taps_hooked(model)) == {0}
    assert torch.equal(out, expected)
