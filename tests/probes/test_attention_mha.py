"""The attention probe on torch's nn.MultiheadAttention, alone and inside nn.TransformerEncoder.

Oracle: the module's own weights (`need_weights=True, average_attn_weights=False`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import inspector


def _encoder() -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    for p in enc.parameters():  # sharper attention than the default init, so the comparison bites
        if p.dim() == 2:
            nn.init.normal_(p, std=0.5)
    return enc


@pytest.mark.parametrize("training", [True, False])
def test_transformer_encoder_causal_maps_equal_module_weights(tmp_path: Path, training: bool) -> None:
    enc = _encoder().train(training)
    x = torch.randn(2, 10, 16)
    mask = nn.Transformer.generate_square_subsequent_mask(10)
    inputs: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].detach().clone()))
             for i, layer in enumerate(enc.layers)]
    with torch.no_grad():
        before = enc(x, mask=mask, is_causal=True)
    w = inspector.watch(enc, tmp_path / "run", probes=["attention"], every=1)
    with torch.set_grad_enabled(training):
        during = enc(x, mask=mask, is_causal=True)
    w.step()
    w.close()
    for h in hooks:
        h.remove()
    torch.testing.assert_close(during, before)
    r = inspector.open_run(tmp_path / "run")
    for i, layer in enumerate(enc.layers):
        with torch.no_grad():
            _, ref = layer.self_attn(inputs[i], inputs[i], inputs[i], attn_mask=mask, need_weights=True,
                                     average_attn_weights=False)
        probs, row = r.fetch(step=0, layer=i)
        assert row["name"] == f"layers.{i}.self_attn"
        assert probs.shape == (4, 10, 10)
        np.testing.assert_allclose(probs.astype(np.float32), ref[0].numpy(), atol=2e-3)
        assert not np.triu(probs.astype(np.float32), k=1).any()


@pytest.mark.parametrize("bool_masks", [True, False])
def test_mha_with_kdim_bias_kv_zero_attn_and_padding(tmp_path: Path, bool_masks: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True, kdim=6, vdim=6)
    q, k = torch.randn(5, 3, 8) * 2, torch.randn(7, 3, 6) * 2
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, -2:] = True  # True = not a key
    bias = torch.randn(5, 7)
    attn_mask = bias > 1  # True = not allowed
    if not bool_masks:
        padding = torch.zeros(3, 7).masked_fill(padding, float("-inf"))
        attn_mask = bias.masked_fill(attn_mask, float("-inf"))
    w = inspector.watch(mha, tmp_path / "run", probes=["attention"], every=1)
    _, ref = mha(q, k, k, key_padding_mask=padding, attn_mask=attn_mask, average_attn_weights=False)
    w.step()
    w.close()
    probs, row = inspector.open_run(tmp_path / "run").fetch(step=0)
    assert row["layer"] == 0 and probs.shape == (2, 5, 9)  # 7 keys + bias_k + zero key
    np.testing.assert_allclose(probs.astype(np.float32), ref[0].detach().numpy(), atol=2e-3)
    assert not probs[:, :, 5:7].any()


@pytest.mark.parametrize("batch_first", [True, False])
def test_the_batch_row_an_inference_watch_names_is_recorded_with_its_own_masks(tmp_path: Path, batch_first: bool) -> None:
    """An inference watch rotates the recorded row over a batch's requests (`BATCH_ROW_KEY`): the
    map is that row's, with its own key padding and its own heads' slice of a 3-d attn_mask."""
    from inspector.probes.attention.sink import BATCH_ROW_KEY

    torch.manual_seed(1)
    B, T, E, H = 3, 6, 8, 2
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first)
    x = torch.randn(B, T, E) * 2 if batch_first else torch.randn(T, B, E) * 2
    padding = torch.zeros(B, T, dtype=torch.bool)
    padding[2, -3:] = True                                   # row 2's last three tokens are padding
    attn_mask = torch.randn(B * H, T, T)                     # a float bias per row and head
    w = inspector.watch(mha, tmp_path / "run", probes=["attention"], every=1)
    w.probes["attention"].ctx.shared[BATCH_ROW_KEY] = 2
    _, ref = mha(x, x, x, key_padding_mask=padding, attn_mask=attn_mask, average_attn_weights=False)
    w.step()
    w.close()
    probs, _ = inspector.open_run(tmp_path / "run").fetch(step=0)
    np.testing.assert_allclose(probs.astype(np.float32), ref[2].detach().numpy(), atol=2e-3)
    assert not probs[:, :, -3:].any() and not np.allclose(ref[2].detach().numpy(), ref[0].detach().numpy(), atol=0.05)
