"""Model components against independent computations: norm, rope, causality, masks, QK capture."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest
from tests.engine.helpers import make_model

from inspector_engine.config import get_config, list_configs
from inspector_engine.model import KVCache, QKCapture, RMSNorm, Transformer, apply_rope, attention_mask
from inspector_engine.model.attention import MLA


def test_named_configs_build_and_debug_is_small() -> None:
    assert {"debug", "tiny", "small"} <= set(list_configs())
    assert Transformer(get_config("debug")).num_parameters() < 1_000_000
    cfg = get_config("tiny")
    assert cfg.kv_lora_rank == cfg.dim // 4 and cfg.qk_rope_head_dim * 2 == cfg.qk_nope_head_dim
    with pytest.raises(KeyError):
        get_config("nope")


def test_rmsnorm_matches_formula() -> None:
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 16)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_rope_matches_deepseek_complex_form() -> None:
    """DeepSeek's reference rotates adjacent pairs as complex numbers by polar(1, pos * freq)."""
    model = make_model()
    R = model.cfg.qk_rope_head_dim
    x = torch.randn(2, 7, 3, R)
    pos = torch.arange(7).unsqueeze(0)
    cos, sin = model.rope(pos)
    freqs = 1.0 / (model.cfg.rope_theta ** (torch.arange(0, R, 2).float() / R))
    cis = torch.polar(torch.ones(7, R // 2), torch.outer(torch.arange(7).float(), freqs))
    ref = torch.view_as_real(torch.view_as_complex(x.reshape(2, 7, 3, R // 2, 2)) * cis[None, :, None]).flatten(-2)
    torch.testing.assert_close(apply_rope(x, cos, sin), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["debug", "debug_v3"])
def test_changing_a_future_token_never_changes_past_logits(name: str) -> None:
    model = make_model(name)
    tokens = torch.randint(0, 256, (2, 40))
    changed = tokens.clone()
    changed[:, 25] = (changed[:, 25] + 1) % 256
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :25], b[:, :25], rtol=0, atol=1e-5)
    assert (a[:, 25:] - b[:, 25:]).abs().max() > 1e-3  # the change is visible downstream


def test_sliding_window_limits_the_receptive_field() -> None:
    window, n_layers = 4, 2
    model = make_model(window=window)
    tokens = torch.randint(0, 256, (1, 40))
    changed = tokens.clone()
    changed[0, 10] = (changed[0, 10] + 7) % 256
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    reach = 10 + n_layers * (window - 1)  # each layer sees window - 1 tokens back
    torch.testing.assert_close(a[0, reach + 1:], b[0, reach + 1:], rtol=0, atol=1e-5)
    assert (a[0, 10:reach + 1] - b[0, 10:reach + 1]).abs().max() > 1e-3


def test_attention_mask_matches_brute_force() -> None:
    T, S, window = 3, 8, 4
    key_mask = torch.tensor([[True] * 8, [False, False] + [True] * 6])
    m = attention_mask(T, S, window, key_mask, torch.device("cpu"))
    for b in range(2):
        for t in range(T):
            q = S - T + t
            for s in range(S):
                want = s <= q and q - s < window and bool(key_mask[b, s])
                assert bool(m[b, 0, t, s]) == want
    assert attention_mask(5, 5, None, None, torch.device("cpu")) is None


def _capture(model: Transformer, layer: int) -> tuple[dict, list]:
    seen: dict = {}
    attn = model.layers[layer].attn
    handles = [
        attn.qk_capture.register_forward_hook(lambda m, args, out: seen.update(q=out[0], k=out[1], mod=m)),
        attn.wo.register_forward_pre_hook(lambda m, args: seen.update(o=args[0])),
        attn.register_forward_pre_hook(lambda m, args: seen.update(x=args[0])),
    ]
    return seen, handles


def _independent_v(attn: MLA, x_BSD: torch.Tensor) -> torch.Tensor:
    latent = x_BSD @ attn.wkv_a.weight[: attn.kv_lora_rank].T
    latent = latent * torch.rsqrt(latent.pow(2).mean(-1, keepdim=True) + attn.kv_norm.eps) * attn.kv_norm.weight
    kv = (latent @ attn.wkv_b.weight.T).unflatten(-1, (attn.n_heads, -1))
    return kv[..., attn.qk_nope_head_dim:].transpose(1, 2)  # [B, H, S, V]


def _reproduce(q, k, v, scale: float, window, key_mask) -> torch.Tensor:
    T, S = q.shape[2], k.shape[2]
    scores = q @ k.transpose(-1, -2) * scale
    qpos = torch.arange(S - T, S)[:, None]
    kpos = torch.arange(S)[None]
    allowed = kpos <= qpos
    if window is not None:
        allowed &= qpos - kpos < window
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None]
    out = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    return out.transpose(1, 2).flatten(2)  # [B, T, H*V], the input of wo


@pytest.mark.parametrize("window", [None, 5])
def test_qk_capture_reproduces_attention_output(window) -> None:
    model = make_model(window=window)
    seen, handles = _capture(model, layer=1)
    tokens = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        model(tokens)
    mod: QKCapture = seen["mod"]
    cfg = model.cfg
    assert seen["q"].shape == (2, cfg.n_heads, 12, cfg.qk_head_dim)
    assert seen["k"].shape == (2, cfg.n_heads, 12, cfg.qk_head_dim)
    assert mod.softmax_scale == pytest.approx(cfg.qk_head_dim ** -0.5) and mod.causal and mod.window == window
    # the shared rope key is broadcast to all heads
    torch.testing.assert_close(seen["k"][:, 0, :, cfg.qk_nope_head_dim:], seen["k"][:, -1, :, cfg.qk_nope_head_dim:])
    v = _independent_v(model.layers[1].attn, seen["x"])
    with torch.no_grad():
        ref = _reproduce(seen["q"], seen["k"], v, mod.softmax_scale, window, mod.key_mask)
    torch.testing.assert_close(ref, seen["o"], rtol=1e-4, atol=1e-5)
    for h in handles:
        h.remove()


def test_qk_capture_during_cached_decoding_queries_are_the_last_positions() -> None:
    model = make_model()
    tokens = torch.randint(0, 256, (1, 10))
    cache = KVCache.for_model(model, 1, capacity=16)
    with torch.no_grad():
        model(tokens[:, :9], cache)
        seen, handles = _capture(model, layer=0)
        model(tokens[:, 9:], cache)
    q, k = seen["q"], seen["k"]
    assert q.shape[2] == 1 and k.shape[2] == 10  # T = 1 query against S = 10 keys
    attn = model.layers[0].attn
    # the cached prefix is not re-run, so recompute v for all 10 keys from the full input
    with torch.no_grad():
        x_full = model.layers[0].attn_norm(model.embed(tokens))
    v = _independent_v(attn, x_full)
    with torch.no_grad():
        ref = _reproduce(q, k, v, attn.qk_capture.softmax_scale, None, None)
    torch.testing.assert_close(ref, seen["o"], rtol=1e-4, atol=1e-5)
    for h in handles:
        h.remove()


def test_activation_checkpointing_gives_identical_gradients() -> None:
    tokens = torch.randint(0, 256, (2, 16))
    grads = []
    for ckpt in (False, True):
        model = make_model("debug_v3").train()
        model.activation_checkpointing = ckpt
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens.roll(-1, 1).flatten()) + model.aux_loss()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        loads = [r.load_since_update.clone() for r in model.routers()]
        # recomputation must not double-count expert load
        assert all(int(l.sum()) == 2 * 16 * model.cfg.n_activated_experts for l in loads)
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7, msg=n)


def test_query_low_rank_path_runs_and_has_its_own_weights() -> None:
    model = make_model(q_lora_rank=24)
    attn = model.layers[0].attn
    assert hasattr(attn, "wq_a") and hasattr(attn, "q_norm") and not hasattr(attn, "wq")
    with torch.no_grad():
        assert model(torch.randint(0, 256, (1, 8))).shape == (1, 8, 256)
