"""Issue 14, defect 5: `nn.TransformerEncoder` in eval with `src_key_padding_mask` (torch packs the
batch into a nested tensor of the unpadded tokens) records attention maps, says once what it cannot
record, never floods the log, and computes bit-identically to the unwatched model.

Oracle for the maps: torch's own `nn.MultiheadAttention` weights (`need_weights=True`) on the padded
batch, with the nested fast path switched off, restricted to sequence 0's real tokens.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import inspector
from inspector.probes import resolve_probes

LENGTHS = (7, 10, 4)
"""Real tokens per sequence; sequence 0 is padded, so the map's shape tells real from padded."""
T, D, HEADS = 10, 32, 4

def _is_note(record: logging.LogRecord) -> bool:
    """The one line saying what cannot be recorded on nested tensors."""
    msg = record.getMessage()
    return "nested tensors" in msg and "not recorded" in msg


def _encoder() -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, HEADS, 64, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
    for p in enc.parameters():  # sharper attention than the default init, so the comparison bites
        if p.dim() == 2:
            nn.init.normal_(p, std=0.4)
    return enc.eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x_BTD = torch.randn(len(LENGTHS), T, D)
    pad_BT = torch.arange(T)[None, :] >= torch.tensor(LENGTHS)[:, None]   # True = padding
    return x_BTD, pad_BT


def _reference_maps(enc: nn.TransformerEncoder, x_BTD: torch.Tensor, pad_BT: torch.Tensor) -> list[np.ndarray]:
    """Per layer, sequence 0's attention [heads, real, real] from the module's own weights, padded path."""
    n = LENGTHS[0]
    maps = []
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            h_BTD = x_BTD
            for layer in enc.layers:
                _, w_BHTS = layer.self_attn(h_BTD, h_BTD, h_BTD, key_padding_mask=pad_BT, need_weights=True,
                                            average_attn_weights=False)
                assert torch.all(w_BHTS[0, :, :n, n:] == 0)  # padded keys get nothing: cropping loses nothing
                maps.append(w_BHTS[0, :, :n, :n].numpy())
                h_BTD = layer(h_BTD, src_key_padding_mask=pad_BT)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    return maps


@dataclass
class Watched:
    run: Path
    unwatched: list[torch.Tensor]
    watched: list[torch.Tensor]
    records: list[logging.LogRecord]
    nested: bool


class _Lines(logging.Handler):
    """Keeps every record the "inspector" logger emits while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _run(tmp: Path, probes: list[str]) -> Watched:
    enc = _encoder()
    x_BTD, pad_BT = _batch()
    with torch.no_grad():
        unwatched = [enc(x_BTD, src_key_padding_mask=pad_BT) for _ in range(3)]
    seen_nested: list[bool] = []
    probe_hook = enc.layers[0].register_forward_pre_hook(lambda m, a: seen_nested.append(a[0].is_nested))
    lines, logger = _Lines(), logging.getLogger("inspector")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        w = inspector.watch(enc, tmp / "run", probes=probes, every=1)
        watched = []
        for _ in range(3):
            with torch.no_grad():
                watched.append(enc(x_BTD, src_key_padding_mask=pad_BT))
            w.step()
        w.close()
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
        probe_hook.remove()
    records = [r for r in lines.records if r.levelno >= logging.INFO]
    return Watched(tmp / "run", unwatched, watched, records, all(seen_nested) and bool(seen_nested))


@pytest.fixture(scope="module")
def attention_only(tmp_path_factory: pytest.TempPathFactory) -> Watched:
    return _run(tmp_path_factory.mktemp("padded_attention"), ["attention"])


def test_the_encoder_really_runs_the_nested_path(attention_only: Watched) -> None:
    assert attention_only.nested, "the layers did not receive nested tensors: the test would test nothing"


def test_maps_of_sequence_zero_equal_the_modules_own_weights(attention_only: Watched) -> None:
    enc = _encoder()
    x_BTD, pad_BT = _batch()
    ref = _reference_maps(enc, x_BTD, pad_BT)
    r = inspector.open_run(attention_only.run)
    for step in range(3):
        for i in range(len(ref)):
            probs, row = r.fetch(step=step, layer=i)
            assert row["name"] == f"layers.{i}.self_attn"
            assert probs.shape == (HEADS, LENGTHS[0], LENGTHS[0])
            np.testing.assert_allclose(probs.astype(np.float32), ref[i], atol=2e-3)
    stats = r.to_pandas("attention_stats")
    assert len(stats) == 3 * len(ref) * HEADS


def test_outputs_are_bit_identical_to_the_unwatched_model(attention_only: Watched) -> None:
    for before, during in zip(attention_only.unwatched, attention_only.watched):
        assert torch.equal(before, during)


def test_what_cannot_be_recorded_is_said_once_in_one_line(attention_only: Watched) -> None:
    notes = [r for r in attention_only.records if _is_note(r)]
    assert len(notes) == 1
    assert all("\n" not in r.getMessage() for r in attention_only.records)
    assert len(attention_only.records) <= 3, [r.getMessage() for r in attention_only.records]


def test_default_probes_do_not_flood_the_log(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    probes = resolve_probes("default")
    assert "attention" in probes and "activations" in probes
    watched = _run(tmp_path, probes)
    for before, during in zip(watched.unwatched, watched.watched):
        assert torch.equal(before, during)
    lines = sum(r.getMessage().count("\n") + 1 for r in watched.records)
    out, err = capfd.readouterr()
    assert lines <= 6, [r.getMessage()[:200] for r in watched.records]
    assert len((out + err).splitlines()) <= 6
    assert sum(map(_is_note, watched.records)) == 1
    assert len(inspector.open_run(watched.run).to_pandas("attention_stats")) == 3 * 2 * HEADS
