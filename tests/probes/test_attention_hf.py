"""The attention probe on a Hugging Face transformers model: sdpa and eager, GQA, padding.

Oracle: the same model's eager attention weights (`output_attentions=True`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import inspector

transformers = pytest.importorskip("transformers")
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface  # noqa: E402


def _llama(impl: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.3, attn_implementation=impl)
    return LlamaForCausalLM(cfg).eval()


def _inputs(pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :pad] = 0  # left padding in the recorded batch element
    return ids, mask


def _no_wrappers_left() -> bool:
    names = list(AttentionInterface._global_mapping) + list(AttentionMaskInterface._global_mapping)
    return not any(n.startswith("inspector") for n in names)


@pytest.mark.parametrize("pad", [0, 3])
def test_sdpa_maps_equal_eager_weights_and_outputs_are_unchanged(tmp_path: Path, pad: int) -> None:
    model = _llama("sdpa")
    ids, mask = _inputs(pad)
    with torch.no_grad():
        before = model(ids, attention_mask=mask).logits
    w = inspector.watch(model, tmp_path / "run", probes=["attention"], every=1)
    assert w.not_applicable == {}
    assert model.config._attn_implementation == "sdpa"  # the name is never changed
    with torch.no_grad():
        during = model(ids, attention_mask=mask).logits
    w.step()
    w.close()
    assert torch.equal(during, before)
    assert model.config._attn_implementation == "sdpa" and _no_wrappers_left()
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).logits, before)
        model.set_attn_implementation("eager")
        eager = model(ids, attention_mask=mask, output_attentions=True).attentions
    r = inspector.open_run(tmp_path / "run")
    for layer in (0, 1):
        probs, row = r.fetch(step=0, layer=layer)
        assert row["name"] == f"model.layers.{layer}.self_attn" and row["heads"] == [0, 1, 2, 3]
        ref = eager[layer][0].numpy()
        assert probs.shape == ref.shape == (4, 12, 12)
        np.testing.assert_allclose(probs.astype(np.float32), ref, atol=2e-3)
        assert ref.std() > 0.05  # the oracle is far from uniform: the comparison means something
        if pad:
            assert not probs[:, pad:, :pad].any()  # padding keys get no weight
    stats = r.to_pandas("attention_stats").sort_values(["layer", "head"])
    ref = np.stack([eager[layer][0].numpy()[:, pad:].astype(np.float64) for layer in (0, 1)])  # rows seeing a key
    entropy = -(ref * np.log(np.where(ref > 0, ref, 1))).sum(-1).mean(-1).reshape(-1)
    np.testing.assert_allclose(stats["entropy"], entropy, rtol=2e-3)
    np.testing.assert_allclose(stats["max_weight"], ref.max(-1).mean(-1).reshape(-1), rtol=2e-3)


def test_eager_model_with_gqa_heads_subset_and_training_mode(tmp_path: Path) -> None:
    model = _llama("eager").train()
    ids, mask = _inputs(2)
    w = inspector.watch(model, tmp_path / "run", probes=["attention"], every=1, heads=[1, 3])
    out = model(ids, attention_mask=mask, output_attentions=True)
    out.logits.sum().backward()
    w.step()
    w.close()
    assert model.config._attn_implementation == "eager" and _no_wrappers_left()
    model.zero_grad()
    again = model(ids, attention_mask=mask, output_attentions=True)
    assert torch.equal(again.logits, out.logits)
    r = inspector.open_run(tmp_path / "run")
    for layer in (0, 1):
        probs, row = r.fetch(step=0, layer=layer)
        assert row["heads"] == [1, 3]
        np.testing.assert_allclose(probs.astype(np.float32), out.attentions[layer][0, [1, 3]].detach().numpy(),
                                   atol=2e-3)


def test_flash_path_with_padding_via_a_stand_in_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flash_attention_2 replaced by an SDPA stand-in with flash's conventions (2-D padding mask,
    bottom-right causal, kernel chosen by the config's name): exercises the probe's flash handling."""
    names_seen: list[str] = []

    def stand_in(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kw):
        names_seen.append(module.config._attn_implementation)
        T, S = query.shape[2], key.shape[2]
        allowed = torch.arange(S)[None, :] <= torch.arange(S - T, S)[:, None]
        allowed = allowed[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, -S:].bool()
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=allowed, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None

    monkeypatch.setitem(AttentionInterface._global_mapping, "flash_attention_2", stand_in)
    model = _llama("sdpa")
    model.config._attn_implementation_internal = "flash_attention_2"
    ids, mask = _inputs(3)
    with torch.no_grad():
        before = model(ids, attention_mask=mask).logits
    w = inspector.watch(model, tmp_path / "run", probes=["attention"], every=1)
    with torch.no_grad():
        during = model(ids, attention_mask=mask).logits
    w.step()
    w.close()
    assert torch.equal(during, before)
    assert set(names_seen) == {"flash_attention_2"}  # the kernel always saw its own name
    assert model.config._attn_implementation == "flash_attention_2" and _no_wrappers_left()
    model.config._attn_implementation_internal = "eager"
    with torch.no_grad():
        eager = model(ids, attention_mask=mask, output_attentions=True).attentions
    r = inspector.open_run(tmp_path / "run")
    for layer in (0, 1):
        probs = r.attention_map(step=0, layer=layer).astype(np.float32)
        np.testing.assert_allclose(probs[:, 3:], eager[layer][0, :, 3:].numpy(), atol=2e-3)


def test_t5_encoder_decoder_cross_attention_and_relative_bias(tmp_path: Path) -> None:
    """Non-causal encoder with padding, causal decoder, cross-attention, T5's position bias."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, initializer_factor=3.0, attn_implementation="sdpa",
                   decoder_start_token_id=0)
    model = T5ForConditionalGeneration(cfg).eval()
    ids, mask = torch.randint(0, 64, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    mask[0, -2:] = 0
    dec = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    w = inspector.watch(model, tmp_path / "run", probes=["attention"], every=1)
    with torch.no_grad():
        during = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    w.step()
    w.close()
    assert torch.equal(during, before) and model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, output_attentions=True)
    r = inspector.open_run(tmp_path / "run")
    assert len(r.blob_rows(step=0)) == 6
    for name, ref in [("encoder.block.1.layer.0.SelfAttention", eager.encoder_attentions[1]),
                      ("decoder.block.1.layer.0.SelfAttention", eager.decoder_attentions[1]),
                      ("decoder.block.0.layer.1.EncDecAttention", eager.cross_attentions[0])]:
        probs, row = r.fetch(step=0, name=name)
        np.testing.assert_allclose(probs.astype(np.float32), ref[0].numpy(), atol=2e-3)


def test_hf_model_inside_a_wrapper_module(tmp_path: Path) -> None:
    """A transformers model held by a user's module (or DDP / PEFT) is found and restored."""
    wrapper = torch.nn.ModuleDict({"lm": _llama("sdpa")})
    ids, _ = _inputs(0)
    w = inspector.watch(wrapper, tmp_path / "run", probes=["attention"], every=1, layers=[1])
    assert w.not_applicable == {}
    with torch.no_grad():
        wrapper["lm"](ids)
    w.step()
    w.close()
    assert wrapper["lm"].config._attn_implementation == "sdpa" and _no_wrappers_left()
    rows = inspector.open_run(tmp_path / "run").blob_rows(step=0)
    assert [(r["name"], r["layer"]) for r in rows] == [("lm.model.layers.1.self_attn", 1)]
