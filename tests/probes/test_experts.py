"""The experts probe against independent oracles: manual bincounts of the routers' own choices."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import inspector
from inspector_engine.config import get_config
from inspector_engine.model import Transformer
from inspector.probes.experts import STARVED_STEPS



def _entropy(p_NE: np.ndarray) -> float:
    """Mean per-row entropy (nats) of row-normalised non-negative scores."""
    p = p_NE / p_NE.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(-np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=-1)))


def _capture(router: nn.Module, box: list) -> None:
    """Keep (scores, indices, aux_loss) of every training forward of an engine router."""
    def hook(mod: nn.Module, args: object, out: tuple) -> None:
        if mod.training:
            aux = None if mod.aux_loss is None else float(mod.aux_loss.detach())
            box.append((out[0].detach().numpy().copy(), out[2].numpy().copy(), aux))
    router.register_forward_hook(hook)


@pytest.mark.parametrize("config", ["debug", "debug_v3"])
def test_engine_counts_match_a_manual_bincount_over_two_micro_batches(tmp_path: Path, config: str) -> None:
    torch.manual_seed(0)
    model = Transformer(get_config(config)).train()
    routers = model.routers()
    assert routers, "the debug configs have MoE layers"
    for r in routers:
        r.bias.copy_(torch.randn(r.n_experts) * 0.05)
    seen: dict[int, list] = {i: [] for i in range(len(routers))}
    for i, r in enumerate(routers):
        _capture(r, seen[i])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    w = inspector.watch(model, tmp_path / "run", probes=["experts"], optimizer=opt, every={"experts": 1})
    per_step: list[dict[int, list]] = []
    biases: list[list[np.ndarray]] = []
    for _ in range(3):
        for box in seen.values():
            box.clear()
        opt.zero_grad()
        for _micro in range(2):
            loss = model(torch.randint(0, 256, (2, 12))).logsumexp(-1).mean()
            loss.backward()
        model.eval()
        with torch.no_grad():
            model(torch.randint(0, 256, (1, 5)))     # eval forwards are not counted
        model.train()
        per_step.append({i: list(box) for i, box in seen.items()})
        biases.append([r.bias.clone().numpy() for r in routers])
        opt.step()
    w.close()

    df = inspector.open_run(tmp_path / "run").to_pandas("expert_load").sort_values(["step", "name"])
    names = [n for n, m in model.named_modules() if m in routers]
    assert len(df) == 3 * len(routers)
    for step in range(3):
        for i, name in enumerate(names):
            row = df[(df["step"] == step) & (df["name"] == name)].iloc[0]
            captured = per_step[step][i]
            assert len(captured) == 2
            ids = np.concatenate([c[1].reshape(-1) for c in captured])
            expected = np.bincount(ids, minlength=routers[i].n_experts)
            counts = np.asarray(row["counts"])
            np.testing.assert_array_equal(counts, expected)
            assert counts.sum() == 2 * 2 * 12 * routers[i].top_k
            assert row["imbalance"] == pytest.approx(expected.max() / expected.mean())
            assert row["cv"] == pytest.approx(np.std(expected) / np.mean(expected))
            scores = np.concatenate([c[0] for c in captured])
            assert row["router_entropy"] == pytest.approx(_entropy(scores), rel=1e-5)
            assert row["aux_loss"] == pytest.approx(np.mean([c[2] for c in captured]), rel=1e-5)
            assert row["dropped"] == 0 and row["layer"] == int(name.split(".")[1])
            if routers[i].score_func == "sigmoid":
                np.testing.assert_allclose(row["bias"], biases[step][i], rtol=1e-6)
            else:
                assert row["bias"] is None


def test_activation_checkpoint_recompute_is_not_counted_twice(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).train()
    model.activation_checkpointing = True
    w = inspector.watch(model, tmp_path / "run", probes=["experts"], every={"experts": 1})
    model(torch.randint(0, 256, (2, 10))).sum().backward()   # backward recomputes each block
    w.step()
    w.close()
    df = inspector.open_run(tmp_path / "run").to_pandas("expert_load")
    assert [int(np.sum(c)) for c in df["counts"]] == [2 * 10 * 2]


def test_a_starved_expert_is_reported_once_at_the_fiftieth_empty_step(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = Transformer(get_config("debug_v3", n_expert_groups=1, n_limited_groups=1)).train()
    router = model.routers()[0]
    router.bias[5] = -100.0                       # sigmoid scores lie in (0, 1): expert 5 never wins
    caplog.set_level(logging.WARNING, logger="inspector")
    w = inspector.watch(model, tmp_path / "run", probes=["experts"], every={"experts": 1})
    with torch.no_grad():
        for _ in range(STARVED_STEPS + 5):
            model(torch.randint(0, 256, (1, 8)))
            w.step()
    w.close()
    r = inspector.open_run(tmp_path / "run")
    loads = r.to_pandas("expert_load")
    assert all(np.asarray(c)[5] == 0 for c in loads["counts"])
    found = r.to_pandas("anomaly")
    found = found[found["kind"] == "expert_starved"]
    assert found["step"].tolist() == [STARVED_STEPS - 1]
    name = [n for n, m in model.named_modules() if m is router][0]
    assert found["module"].tolist() == [name] and "expert(s) [5] " in found["message"].iloc[0]
    assert sum("received no token" in m for m in caplog.messages) == 1


def test_starvation_is_judged_in_training_steps_when_experts_are_recorded_every_tenth_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(get_config("debug_v3", n_expert_groups=1, n_limited_groups=1)).train()
    model.routers()[0].bias[5] = -100.0
    w = inspector.watch(model, tmp_path / "run", probes=["experts"], every={"experts": 10})
    with torch.no_grad():
        for _ in range(4 * STARVED_STEPS):
            model(torch.randint(0, 256, (1, 8)))
            w.step()
    w.close()
    found = inspector.open_run(tmp_path / "run").to_pandas("anomaly").query("kind == 'expert_starved'")
    # recorded at steps 0, 10, ..., 50: the first recorded step 50 training steps into the stretch
    assert found["step"].tolist() == [STARVED_STEPS]
    assert "from step 0 to 50 (6 recorded)" in found["message"].iloc[0]


def test_a_model_without_routers_is_not_applicable(tmp_path: Path) -> None:
    w = inspector.watch(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), tmp_path / "run", probes=["experts"], every={"experts": 1})
    w.close()
    assert w.not_applicable["experts"].startswith("no MoE routers found")


# ---- Hugging Face routers -------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)


def _hf_model(kind: str) -> tuple[nn.Module, int, int, str]:
    """A tiny random HF MoE model, its expert count, top-k, and how its logits become probabilities."""
    torch.manual_seed(0)
    if kind == "mixtral":
        cfg = transformers.MixtralConfig(**COMMON, num_local_experts=4, num_experts_per_tok=2)
        return transformers.MixtralForCausalLM(cfg), 4, 2, "softmax"
    if kind == "qwen2_moe":
        cfg = transformers.Qwen2MoeConfig(**COMMON, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=16,
                                          shared_expert_intermediate_size=16)
        return transformers.Qwen2MoeForCausalLM(cfg), 6, 2, "softmax"
    cfg = transformers.DeepseekV3Config(**{**COMMON, "num_key_value_heads": 4}, n_routed_experts=8,
                                       num_experts_per_tok=3, moe_intermediate_size=16, n_group=1, topk_group=1,
                                       first_k_dense_replace=0, kv_lora_rank=16, q_lora_rank=None,
                                       qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
    return transformers.DeepseekV3ForCausalLM(cfg), 8, 3, "sigmoid"


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_hf_router_counts_match_topk_of_the_logits(tmp_path: Path, kind: str) -> None:
    model, n_experts, k, how = _hf_model(kind)
    model.train()
    gates = {n: m for n, m in model.named_modules() if n.endswith("mlp.gate")}
    assert len(gates) == 2
    logits: dict[str, list[torch.Tensor]] = {n: [] for n in gates}
    with torch.no_grad():
        for g in gates.values():
            nn.init.normal_(g.weight, std=0.5)       # zero-initialised gates would tie every score
            if hasattr(g, "e_score_correction_bias"):
                g.e_score_correction_bias.copy_(torch.randn(n_experts) * 0.1)
    for n, g in gates.items():
        g.register_forward_hook(lambda mod, args, out, n=n: logits[n].append(out[0].detach().clone()))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    w = inspector.watch(model, tmp_path / "run", probes=["experts"], optimizer=opt, every={"experts": 1})
    for _micro in range(2):
        model(torch.randint(0, 64, (2, 7))).logits.float().logsumexp(-1).mean().backward()
    opt.step()
    w.close()

    df = inspector.open_run(tmp_path / "run").to_pandas("expert_load").set_index("name")
    assert sorted(df.index) == sorted(gates)
    for n, g in gates.items():
        x = torch.cat(logits[n]).float()
        assert x.shape == (2 * 2 * 7, n_experts)
        if how == "softmax":
            probs = x.softmax(-1)
            ids = torch.topk(probs, k, dim=-1).indices
        else:
            probs = x.sigmoid()
            ids = torch.topk(probs + g.e_score_correction_bias, k, dim=-1).indices
        expected = np.bincount(ids.flatten().numpy(), minlength=n_experts)
        row = df.loc[n]
        np.testing.assert_array_equal(np.asarray(row["counts"]), expected)
        assert row["imbalance"] == pytest.approx(expected.max() / expected.mean())
        assert row["cv"] == pytest.approx(expected.std() / expected.mean())
        assert row["router_entropy"] == pytest.approx(_entropy(probs.numpy()), rel=1e-5)
        assert row["dropped"] == 0 and np.isnan(row["aux_loss"])
        assert row["layer"] == int(n.split(".")[2])
        if how == "sigmoid":
            np.testing.assert_allclose(row["bias"], g.e_score_correction_bias.numpy(), rtol=1e-6)
        else:
            assert row["bias"] is None


def test_a_router_returning_only_logits_gets_its_topk_here(tmp_path: Path) -> None:
    class TopOnlyRouter(nn.Linear):
        """Like DBRX's: returns only logits."""

    class Moe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.router = TopOnlyRouter(8, 5, bias=False)
            self.top_k = 2
            self.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.router(x)
            ids = logits.topk(2, dim=-1).indices
            return sum(self.experts[e](x) * (ids == e).any(-1, keepdim=True) for e in range(5))

    torch.manual_seed(0)
    model = nn.Sequential(Moe(), Moe())
    x = torch.randn(9, 8)
    w = inspector.watch(model, tmp_path / "run", probes=["experts"], every={"experts": 1})
    model(x).sum().backward()
    w.step()
    w.close()
    df = inspector.open_run(tmp_path / "run").to_pandas("expert_load").set_index("name")
    ids = model[0].router(x).topk(2, dim=-1).indices
    np.testing.assert_array_equal(np.asarray(df.loc["0.router", "counts"]), np.bincount(ids.flatten(), minlength=5))
    assert np.isnan(df.loc["1.router", "aux_loss"]) and df.loc["1.router", "layer"] == 1
