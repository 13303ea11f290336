"""Router and MoE against independent computations; V3 aux-loss-free balancing."""

from __future__ import annotations

import pytest
import torch

from inspector_engine.config import get_config
from inspector_engine.model import MoE, Router


def _router(score_func: str, **kw) -> Router:
    torch.manual_seed(3)
    r = Router(dim=16, n_experts=8, top_k=2, score_func=score_func, **kw)
    with torch.no_grad():
        r.weight.normal_(std=0.5)
    return r


@pytest.mark.parametrize("score_func,norm", [("softmax", False), ("softmax", True), ("sigmoid", False)])
def test_routing_weights_and_counts(score_func: str, norm: bool) -> None:
    r = _router(score_func, norm_topk_prob=norm, route_scale=2.5)
    if score_func == "sigmoid":
        r.bias.copy_(torch.linspace(-0.3, 0.3, 8))
    x = torch.randn(50, 16)
    scores, weights, idx = r(x)
    logits = x @ r.weight.T
    ref_scores = logits.softmax(-1) if score_func == "softmax" else logits.sigmoid()
    torch.testing.assert_close(scores, ref_scores)
    select = ref_scores + (r.bias if score_func == "sigmoid" else 0)
    ref_idx = select.topk(2, dim=-1).indices
    assert torch.equal(idx.sort(-1).values, ref_idx.sort(-1).values)
    assert idx.dtype == torch.int64
    chosen = ref_scores.gather(1, idx)  # the bias never enters the weights
    if norm or score_func == "sigmoid":
        torch.testing.assert_close(weights.sum(-1), torch.full((50,), 2.5))
        torch.testing.assert_close(weights, chosen / chosen.sum(-1, keepdim=True) * 2.5)
    else:
        torch.testing.assert_close(weights, chosen * 2.5)
    torch.testing.assert_close(r.tokens_per_expert, torch.bincount(idx.flatten(), minlength=8).float())


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_group_limited_routing_stays_in_best_groups(score_func: str) -> None:
    r = _router(score_func, n_groups=4, topk_groups=2)
    x = torch.randn(64, 16)
    scores, _, idx = r(x)
    grouped = scores.view(64, 4, 2)
    gscore = grouped.amax(-1) if score_func == "softmax" else grouped.sum(-1)  # top-2 of 2 = sum
    best = gscore.topk(2, dim=-1).indices
    assert all(set((idx[n] // 2).tolist()) <= set(best[n].tolist()) for n in range(64))


@pytest.mark.parametrize("score_func", ["softmax", "sigmoid"])
def test_balance_loss_matches_formula(score_func: str) -> None:
    r = _router(score_func, aux_loss_alpha=0.01).train()
    B, T, E, K = 3, 10, 8, 2
    x = torch.randn(B * T, 16)
    scores, _, idx = r(x, seq_len=T)
    total = 0.0
    for b in range(B):
        s = scores[b * T:(b + 1) * T]
        s = s if score_func == "softmax" else s / s.sum(-1, keepdim=True)
        f = torch.bincount(idx[b * T:(b + 1) * T].flatten(), minlength=E).float() * E / (K * T)
        total += float((f * s.mean(0)).sum().detach())
    assert float(r.aux_loss.detach()) == pytest.approx(0.01 * total / B, rel=1e-5)
    r.eval()
    r(x)
    assert r.aux_loss is None


def test_aux_free_bias_moves_a_skewed_router_toward_balance() -> None:
    torch.manual_seed(0)
    r = Router(dim=16, n_experts=8, top_k=2, score_func="sigmoid").train()
    direction = torch.ones(16) / 4
    with torch.no_grad():
        r.weight.normal_(std=0.1)
        r.weight[:2] += direction  # experts 0 and 1 like every token
    x = torch.randn(256, 16) * 0.5 + direction

    def max_vio() -> float:
        with torch.no_grad():
            r(x)
        load = r.tokens_per_expert
        return float(load.max() / load.mean() - 1)

    before = max_vio()
    assert before > 2.0  # nearly everything goes to two of eight experts
    weights_before = r(x)[1]
    for _ in range(300):
        with torch.no_grad():
            r(x)
        r.balance_update(gamma=0.01)
    after = max_vio()
    assert after < 0.5 * before and after < 1.0
    assert r.bias[:2].max() < 0 < r.bias[2:].max()  # overloaded experts pushed down
    # weights still come from the unbiased affinities
    s, w, i = r(x)
    chosen = s.gather(1, i)
    torch.testing.assert_close(w, chosen / chosen.sum(-1, keepdim=True))
    assert not torch.equal(w, weights_before)


def test_softmax_router_ignores_balance_update() -> None:
    r = _router("softmax").train()
    r(torch.randn(20, 16))
    r.balance_update(gamma=0.1)
    assert torch.count_nonzero(r.bias) == 0 and torch.count_nonzero(r.load_since_update) == 0


@pytest.mark.parametrize("name", ["debug", "debug_v3"])
def test_moe_matches_per_token_loop(name: str) -> None:
    torch.manual_seed(5)
    moe = MoE(get_config(name)).eval()
    x = torch.randn(2, 7, moe.router.dim)
    with torch.no_grad():
        y = moe(x)
        _, w, idx = moe.router(x.view(-1, x.shape[-1]))
        ref = []
        for n, tok in enumerate(x.view(-1, x.shape[-1])):
            out = moe.shared_experts(tok)
            for k in range(idx.shape[1]):
                out = out + w[n, k] * moe.experts[int(idx[n, k])](tok)
            ref.append(out)
    torch.testing.assert_close(y.view(-1, x.shape[-1]), torch.stack(ref), rtol=1e-5, atol=1e-6)


def test_first_layers_dense_rest_moe() -> None:
    from inspector_engine.model import MLP, Transformer

    cfg = get_config("debug", n_layers=3, n_dense_layers=2)
    model = Transformer(cfg)
    kinds = [type(layer.ffn) for layer in model.layers]
    assert kinds == [MLP, MLP, MoE] and len(model.routers()) == 1
