"""Attention of decoded tokens, as the inference-mode watch records it, equals a full forward's row.

For the engine (MLA) on both the decompressed and the weight-absorbed decode path, with a batch
whose recorded row is left-padded, the oracle is numpy's softmax of the queries and keys a plain
full forward (no cache, decompressed) hands its own `QKCapture` taps; for a tiny Hugging Face Llama
it is the model's own eager attention weights (`output_attentions=True`). The request view's
labels and positions are checked against the request's own tokens.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import inspector
from inspector.views import inference as views
from inspector.views.live import LiveRun
from inspector_engine.config import get_config
from inspector_engine.inference import BatchScheduler, SamplingParams
from inspector_engine.model import Transformer


def _full_forward_rows(model: Transformer, tokens: list[int]) -> dict[int, np.ndarray]:
    """Per layer: probabilities [heads, T, T] of a no-cache decompressed forward, in numpy."""
    taps = {i: blk.attn.qk_capture for i, blk in enumerate(model.layers)}
    seen: dict[int, np.ndarray] = {}
    handles = [tap.register_forward_hook(
        lambda m, a, out, i=i: seen.__setitem__(i, (out[0][0].double().numpy(), out[1][0].double().numpy(),
                                                    m.softmax_scale)))
        for i, tap in taps.items()]
    model.set_attn_impl("decompress")
    with torch.no_grad():
        model(torch.tensor([tokens]))
    for h in handles:
        h.remove()
    probs = {}
    for i, (q_HTD, k_HSD, scale) in seen.items():
        s_HTS = np.einsum("htd,hsd->hts", q_HTD, k_HSD) * scale
        T = s_HTS.shape[1]
        s_HTS = np.where(np.tril(np.ones((T, T), bool)), s_HTS, -np.inf)
        e = np.exp(s_HTS - s_HTS.max(-1, keepdims=True))
        probs[i] = e / e.sum(-1, keepdims=True)
    return probs


@pytest.mark.parametrize("impl", ["decompress", "absorb"])
def test_engine_decode_attention_equals_the_full_forward_row(tmp_path: Path, impl: str) -> None:
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    model.set_attn_impl(impl)
    sched = BatchScheduler(model, max_batch_size=2, max_batch_tokens=128)
    w = inspector.watch(model, tmp_path / "run", mode="inference", every={"attention": 1})
    w.observe(sched)
    calls = {"QKCapture": 0, "LatentQKCapture": 0}
    for m in model.modules():
        if type(m).__name__ in calls:
            m.register_forward_hook(lambda mod, a, o: calls.__setitem__(type(mod).__name__,
                                                                          calls[type(mod).__name__] + 1))
    short, long_ = [3, 1, 4, 1, 5], list(range(30, 52))
    sched.submit(short, 7, SamplingParams(temperature=1.0, seed=0))   # row 0, left-padded once both run
    sched.submit(long_, 7, SamplingParams(temperature=1.0, seed=1))
    done = sched.run()
    w.close()
    # the path under test really ran: decode forwards went through the absorbed tap
    assert calls["LatentQKCapture" if impl == "absorb" else "QKCapture"] > 0
    if impl == "decompress":
        assert calls["LatentQKCapture"] == 0
    run = LiveRun(tmp_path / "run")
    oracle = {r.id: _full_forward_rows(model, r.prompt + r.output) for r in done}
    checked_decode = checked_padded = 0
    for req in done:
        tokens = req.prompt + req.output
        for step, q_start, q_count in views.request_attention_steps(run, req.id):
            for layer in views.attention_layers_at(run, step):
                for head in range(model.cfg.n_heads):
                    got = views.request_attention(run, request_id=req.id, step=step, layer=layer, head=head)
                    assert got is not None
                    want = oracle[req.id][layer][head]
                    rows = np.asarray(got.query_positions)
                    assert got.key_positions == list(range(q_start + q_count))
                    assert got.key_labels == [str(t) for t in tokens[:q_start + q_count]]
                    np.testing.assert_allclose(got.probs, want[rows][:, :q_start + q_count], atol=2e-3)
            if q_count == 1:
                checked_decode += 1
            raw, _ = run.reader.fetch("attention_map", step=step, layer=0)
            if raw.shape[-1] > q_start + q_count:
                checked_padded += 1
    assert all(views.request_attention_steps(run, r.id) for r in done)  # the recorded row rotates
    assert checked_decode >= 4
    assert checked_padded >= 1   # a map whose row 0 was left-padded in the batch cache was checked
    assert np.std(oracle[done[0].id][0]) > 0.05


transformers = pytest.importorskip("transformers")


def test_hf_llama_generate_decode_attention_equals_eager_weights(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.3, attn_implementation="sdpa", pad_token_id=0, eos_token_id=63)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 60, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0          # row 0 left-padded
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    w = inspector.watch(model, tmp_path / "run", mode="inference", every={"attention": 1})
    with torch.no_grad():
        watched = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                 streamer=w.streamer())
    w.close()
    assert torch.equal(plain, watched)
    run = LiveRun(tmp_path / "run")
    reqs = views.requests_frame(run)
    assert reqs["prompt_tokens"].tolist() == [6, 9]
    assert reqs["generation_tokens"].tolist() == [6, 6]
    model.set_attn_implementation("eager")
    total = 0
    for row, lead in ((0, 3), (1, 0)):
        rid = int(reqs["request_id"].iloc[row])
        tokens = ids[row, lead:].tolist() + watched[row, 9:].tolist()
        assert list(views.request_row(reqs, rid)["output_ids"]) == watched[row, 9:].tolist()
        with torch.no_grad():
            eager = model(torch.tensor([tokens]), output_attentions=True).attentions
        steps = views.request_attention_steps(run, rid)
        assert len(steps) >= 2     # the recorded row rotates over the batch: both requests are shown
        total += len(steps)
        for step, q_start, q_count in steps:
            if q_count > 1:
                assert q_start == -lead    # the prefill's first query is the row's first pad
            for layer in (0, 1):
                for head in range(4):
                    got = views.request_attention(run, request_id=rid, step=step, layer=layer, head=head)
                    want = eager[layer][0, head].numpy()
                    rows = np.asarray(got.query_positions)
                    assert got.key_positions == list(range(q_start + q_count))
                    np.testing.assert_allclose(got.probs, want[rows][:, :q_start + q_count], atol=2e-3)
        assert np.std(eager[0][0].numpy()) > 0.05
    assert total == 6    # one map per iteration: the prefill and five decodes
