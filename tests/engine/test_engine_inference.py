"""Generation, sampling filters, the dynamic batching scheduler, and LoRA merging."""

from __future__ import annotations

import pytest
import torch

from inspector_engine.inference import BatchScheduler, SamplingParams, filter_logits, generate, sample
from inspector_engine.model import LoRALinear, apply_lora, lora_state_dict, merge_lora, unmerge_lora
from tests.engine.helpers import make_model


def test_cached_and_uncached_greedy_generation_agree() -> None:
    model = make_model("debug_v3")
    prompt = torch.randint(0, 256, (2, 7))
    with_cache = generate(model, prompt, 12, use_cache=True)
    without = generate(model, prompt, 12, use_cache=False)
    assert with_cache.shape == (2, 19) and torch.equal(with_cache, without)
    model.set_attn_impl("absorb")
    assert torch.equal(generate(model, prompt, 12), with_cache)


def test_scheduler_returns_each_requests_own_continuation() -> None:
    model = make_model("debug_v3")
    g = torch.Generator().manual_seed(7)
    specs = [(int(torch.randint(2, 20, (1,), generator=g)), int(torch.randint(1, 12, (1,), generator=g))) for _ in range(7)]
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n, _ in specs]
    sched = BatchScheduler(model, max_batch_size=3, max_batch_tokens=60)
    reqs = [sched.submit(p, m) for p, (_, m) in zip(prompts, specs)]
    done = sched.run()
    assert [r.id for r in done] == [r.id for r in reqs] and all(r.finished for r in done)
    assert sched.peak_batch_size == 3  # requests really were batched (and queued)
    for req, prompt, (_, max_new) in zip(done, prompts, specs):
        alone = generate(model, torch.tensor([prompt]), max_new)[0, len(prompt):].tolist()
        assert req.output == alone, req.id
        assert req.finish_reason == "length"


def test_scheduler_respects_budget_and_stop_tokens() -> None:
    model = make_model()
    sched = BatchScheduler(model, max_batch_size=8, max_batch_tokens=30)
    with pytest.raises(ValueError):
        sched.submit([1] * 25, 10)  # can never fit
    first = generate(model, torch.tensor([[5, 6, 7]]), 3)[0, 3:].tolist()
    stop = first[2]
    stopped = sched.submit([5, 6, 7], 20, stop_tokens=(stop,))
    other = sched.submit([1, 2, 3, 4], 20)
    sched.step()
    assert list(sched.waiting) == [other]  # 23 + 24 reserved tokens exceed 30: the second waits
    sched.run()
    assert sched.peak_batch_size == 1
    assert stopped.output == first[: first.index(stop) + 1] and stopped.finish_reason == "stop"
    assert len(other.output) == 20 and other.finish_reason == "length"


def test_top_k_and_top_p_filters() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    keep_k = torch.isfinite(filter_logits(logits, top_k=2))
    assert keep_k.tolist() == [[True, True, False, False, False]]
    keep_p = torch.isfinite(filter_logits(logits, top_p=0.8))  # 0.5 + 0.2 < 0.8 <= 0.5 + 0.2 + 0.15
    assert keep_p.tolist() == [[True, True, True, False, False]]
    keep_p = torch.isfinite(filter_logits(logits, top_p=0.3))
    assert keep_p.tolist() == [[True, False, False, False, False]]


def test_sampling_modes() -> None:
    logits = torch.randn(4, 256)
    assert torch.equal(sample(logits, SamplingParams()), logits.argmax(-1))
    a = sample(logits, SamplingParams(temperature=1.0), torch.Generator().manual_seed(1))
    b = sample(logits, SamplingParams(temperature=1.0), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    top1 = sample(logits, SamplingParams(temperature=5.0, top_k=1), torch.Generator().manual_seed(2))
    assert torch.equal(top1, logits.argmax(-1))
    draws = torch.stack([sample(logits[:1], SamplingParams(temperature=1.0, top_k=3)) for _ in range(200)])
    assert set(draws.flatten().tolist()) <= set(logits[0].topk(3).indices.tolist())
    model = make_model()
    p = SamplingParams(temperature=0.9, top_p=0.9, seed=3)
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(model, prompt, 8, p), generate(model, prompt, 8, p))


def test_lora_merge_gives_the_same_outputs_as_unmerged() -> None:
    model = make_model("debug_v3")
    tokens = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        base = model(tokens)
    names = apply_lora(model)  # rank 16, alpha 32
    adapters = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert names and all(n.endswith((".wq", ".wkv_b")) for n in names) and len(adapters) == 2 * model.cfg.n_layers
    assert adapters[0].rank == 16 and adapters[0].scaling == 2.0
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), base)  # B = 0 at init: a no-op
        for m in adapters:
            m.lora_B.normal_(std=0.05)
        unmerged = model(tokens)
        cache_out = generate(model, tokens, 4)
        assert (unmerged - base).abs().max() > 1e-3
        merge_lora(model)
        torch.testing.assert_close(model(tokens), unmerged, rtol=1e-5, atol=1e-5)
        assert torch.equal(generate(model, tokens, 4), cache_out)
        model.set_attn_impl("absorb")  # the absorbed path reads the (merged) wkv_b weight
        assert torch.equal(generate(model, tokens, 4), cache_out)
        unmerge_lora(model)
        model.set_attn_impl("decompress")
        torch.testing.assert_close(model(tokens), unmerged, rtol=1e-5, atol=1e-5)
    assert set(lora_state_dict(model)) == {k for k in model.state_dict() if "lora_" in k}
