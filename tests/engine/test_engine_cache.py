"""KV-cache decoding against the full forward, and the cache's memory footprint."""

from __future__ import annotations

import pytest
import torch

from inspector_engine.model import KVCache
from tests.engine.helpers import make_model

# fp32 on CPU: cached and full computations differ only by summation order (observed ~1e-6).
ATOL = 1e-4


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("debug", {}),
        ("debug", {"attn_impl": "absorb"}),
        ("debug", {"window": 6}),
        ("debug", {"window": 6, "attn_impl": "absorb"}),
        ("debug_v3", {"q_lora_rank": 24}),
    ],
)
def test_cached_decoding_matches_full_forward(name: str, overrides: dict) -> None:
    model = make_model(name, **overrides)
    tokens = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache.for_model(model, 2, capacity=4)  # forces growth while decoding
        steps = [model(tokens[:, :10], cache)]  # prefill
        steps.append(model(tokens[:, 10:14], cache))  # chunked prefill on top of a cache
        steps += [model(tokens[:, t:t + 1], cache) for t in range(14, 24)]  # one token at a time
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=ATOL)
    assert cache.length == 24


def test_cached_bytes_per_token_is_latent_plus_rope_key_per_layer() -> None:
    model = make_model()
    cfg = model.cfg
    for dtype in (torch.float32, torch.bfloat16):
        T = 13
        cache = KVCache.for_model(model, 1, capacity=T, dtype=dtype)
        with torch.no_grad():
            model(torch.randint(0, 256, (1, T)), cache)
        expected = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * cfg.n_layers * torch.tensor([], dtype=dtype).element_size()
        assert cache.bytes_per_token() == expected
        assert cache.allocated_bytes() == T * expected  # nothing else (no per-head keys/values) is stored
    # MLA's point: far less than a per-head K/V cache of the same model
    mha = cfg.n_heads * (cfg.qk_head_dim + cfg.v_head_dim) * cfg.n_layers * 4
    assert KVCache.for_model(model, 1).bytes_per_token() * 5 < mha


def test_right_aligned_batch_matches_separate_sequences() -> None:
    """Two sequences of different lengths merged into one padded cache decode like separate ones."""
    model = make_model()
    a, b = torch.randint(0, 256, (1, 9)), torch.randint(0, 256, (1, 4))
    nxt = torch.randint(0, 256, (2, 3))
    with torch.no_grad():
        ca, cb = KVCache.for_model(model, 1), KVCache.for_model(model, 1)
        model(a, ca)
        model(b, cb)
        merged = KVCache.for_model(model, 0)
        merged.extend(cb)
        merged.extend(ca)  # longer one second: the first row gets shifted right
        assert merged.pad_B.tolist() == [5, 0] and merged.length == 9
        batched = model(nxt, merged)
        ref_b = model(torch.cat([b, nxt[:1]], 1))[:, -3:]
        ref_a = model(torch.cat([a, nxt[1:]], 1))[:, -3:]
        torch.testing.assert_close(batched[0:1], ref_b, rtol=0, atol=ATOL)
        torch.testing.assert_close(batched[1:2], ref_a, rtol=0, atol=ATOL)
        merged.select([1])  # retire the short row: padding columns are trimmed away
        assert merged.pad_B.tolist() == [0] and merged.length == 12


def test_allocated_bytes_equal_the_tensors_through_batch_surgery() -> None:
    """`allocated_bytes` is arithmetic; the tensors themselves are the oracle, through the scheduler's
    growth, merges (extend), finished rows leaving (select) and padding trims."""
    from inspector_engine.inference import BatchScheduler, SamplingParams

    model = make_model()
    sched = BatchScheduler(model, max_batch_size=3, max_batch_tokens=3 * 40)
    for n, new in ((5, 9), (11, 3), (3, 14), (8, 6)):
        sched.submit(list(range(1, n + 1)), new, SamplingParams(temperature=0.0))
    seen = set()
    while sched.has_work:
        sched.step()
        cache = sched.cache
        held = sum(t.numel() * t.element_size() for t in cache.latent + cache.k_rope)
        assert cache.allocated_bytes() == held
        seen.add((cache.batch_size, cache.capacity))
    assert len(seen) > 3   # the batch and the capacity did change along the way
