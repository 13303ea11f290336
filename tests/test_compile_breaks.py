"""torch.compile with the default probes: no added graph break, graph or recompile (issue 14, defect 3).

One small block model (embedding, two pre-norm MLP blocks, head; it compiles to 1 graph with 0
breaks) trained 4 steps compiled without the Inspector, then with `watch` before
`torch.compile(model)`, with `watch(torch.compile(model))` and with `model.compile()`; dynamo's
own counters (`torch._dynamo.utils.counters`) are compared with the unwatched run's. The
gradient norms recorded are compared with an eager watched run's, and with a manual norm.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import inspector
from inspector.store.reader import RunReader

STEPS = 4


class Block(nn.Module):
    """Pre-norm MLP block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        return x_BTD + self.down(F.gelu(self.up(self.norm(x_BTD))))


class Tiny(nn.Module):
    """Embedding, two blocks, head."""

    def __init__(self, vocab: int = 32, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList([Block(dim), Block(dim)])
        self.head = nn.Linear(dim, vocab)

    def forward(self, x_BT: torch.Tensor) -> torch.Tensor:
        h_BTD = self.emb(x_BT)
        for layer in self.layers:
            h_BTD = layer(h_BTD)
        return self.head(h_BTD)


class Router(nn.Module):
    """A top-k MoE layer written the way many are: `gate` beside an `experts` list; every expert runs
    on every token and the chosen ones are gathered (no data-dependent shape, so no graph break)."""

    def __init__(self, dim: int, n_experts: int = 4, top_k: int = 2) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n_experts)])
        self.top_k = top_k

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        weights_BTK, chosen_BTK = self.gate(x_BTD).softmax(-1).topk(self.top_k, -1)
        all_BTED = torch.stack([expert(x_BTD) for expert in self.experts], -2)
        picked_BTKD = torch.gather(all_BTED, -2, chosen_BTK.unsqueeze(-1).expand(*chosen_BTK.shape, x_BTD.shape[-1]))
        return (picked_BTKD * weights_BTK.unsqueeze(-1)).sum(-2)


class AttentionBlock(nn.Module):
    """Pre-norm block: causal nn.MultiheadAttention, then the MoE layer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.moe = Router(dim)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        h_BTD = self.norm1(x_BTD)
        T = x_BTD.shape[1]
        causal_TT = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        x_BTD = x_BTD + self.attn(h_BTD, h_BTD, h_BTD, attn_mask=causal_TT, need_weights=False)[0]
        return x_BTD + self.moe(self.norm2(x_BTD))


class TinyAttentionMoE(Tiny):
    """Tiny with attention + MoE blocks: the attention and experts probes apply too."""

    def __init__(self, vocab: int = 32, dim: int = 16) -> None:
        super().__init__(vocab, dim)
        self.layers = nn.ModuleList([AttentionBlock(dim), AttentionBlock(dim)])


def _counts() -> dict[str, int]:
    return {"graphs": counters["stats"]["unique_graphs"], "breaks": sum(counters["graph_break"].values()),
            "recompiles": sum(counters["recompiles"].values())}


def _train(mode: str, run_dir, steps: int = STEPS, model_cls: type[nn.Module] = Tiny
           ) -> tuple[dict[str, int], list[float]]:
    """Train `steps` steps; returns dynamo's counts and the manual pre-clip gradient norm per step."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = model_cls()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = None
    if mode == "eager":
        w, run = inspector.watch(model, run_dir, optimizer=opt, every=1), model
    elif mode == "none":
        run = torch.compile(model)
    elif mode == "before":
        w = inspector.watch(model, run_dir, optimizer=opt, every=1)
        run = torch.compile(model)
    elif mode == "after":
        run = torch.compile(model)
        w = inspector.watch(run, run_dir, optimizer=opt, every=1)
    elif mode == "method":
        model.compile()
        w, run = inspector.watch(model, run_dir, optimizer=opt, every=1), model
    gen = torch.Generator().manual_seed(1)
    norms = []
    try:
        for _ in range(steps):
            x_BT = torch.randint(0, 32, (2, 8), generator=gen)
            y_BT = torch.randint(0, 32, (2, 8), generator=gen)
            loss = F.cross_entropy(run(x_BT).flatten(0, 1), y_BT.flatten())
            loss.backward()
            norms.append(math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters())))
            opt.step()
            if w is not None:
                w.step(loss=loss.detach())
            opt.zero_grad(set_to_none=True)
    finally:
        if w is not None:
            w.close()
    return _counts(), norms


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, int], list[float], object]]:
    out = {}
    for mode in ("none", "eager", "before", "after", "method"):
        d = tmp_path_factory.mktemp(mode)
        counts, norms = _train(mode, d)
        out[mode] = (counts, norms, d)
    return out


def test_unwatched_compiles_to_one_graph(runs) -> None:
    assert runs["none"][0] == {"graphs": 1, "breaks": 0, "recompiles": 0}


@pytest.mark.parametrize("mode", ["before", "after", "method"])
def test_no_added_graph_break_or_recompile(runs, mode: str) -> None:
    assert runs[mode][0] == runs["none"][0], counters["graph_break"]


def _scalar(run_dir, name: str) -> np.ndarray:
    df = RunReader(run_dir).to_pandas("scalar")
    return df[df["name"] == name].sort_values("step")["value"].to_numpy()


@pytest.mark.parametrize("mode", ["before", "after", "method"])
def test_records_equal_the_eager_run(runs, mode: str) -> None:
    compiled = _scalar(runs[mode][2], "grad_norm/global")
    eager = _scalar(runs["eager"][2], "grad_norm/global")
    assert len(compiled) == len(eager) == STEPS
    np.testing.assert_allclose(compiled, runs[mode][1], rtol=1e-5)   # the manual norm of this run
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)


@pytest.mark.parametrize("mode", ["before", "after", "method"])
def test_model_timed_at_the_compiled_boundary(runs, mode: str) -> None:
    df = RunReader(runs[mode][2]).to_pandas("timing")
    rows = {(n, p) for n, p in zip(df["name"], df["phase"])}
    assert {("model", "forward"), ("model", "backward"), ("optimizer", "optimizer"), ("step", "total")} <= rows
    fwd = df[(df["name"] == "model") & (df["phase"] == "forward")]
    assert (fwd["ms"] > 0).all() and len(fwd) == STEPS
    assert not any(n.startswith("layers.") for n in df["name"])  # blocks inside the graph: left out


def test_compiled_region_said_once(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="inspector"):
        _train("before", tmp_path, steps=3)
    lines = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert sum("timing" in m for m in lines) == 1 and sum("activations" in m for m in lines) <= 1, lines


@pytest.mark.parametrize("mode", ["before", "method"])
def test_attention_and_experts_add_no_break(tmp_path, caplog: pytest.LogCaptureFixture, mode: str) -> None:
    """The attention (nn.MultiheadAttention) and experts (gate + experts) probes apply to this model,
    every probe samples every step, and still nothing is added to the one graph; what they cannot
    see inside it is said once each."""
    unwatched, _ = _train("none", tmp_path / "none", model_cls=TinyAttentionMoE)
    assert unwatched == {"graphs": 1, "breaks": 0, "recompiles": 0}
    with caplog.at_level("WARNING", logger="inspector"):
        watched, _ = _train(mode, tmp_path / mode, model_cls=TinyAttentionMoE)
    assert watched == unwatched, dict(counters["graph_break"])
    lines = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    for probe in ("attention", "experts"):
        assert sum(f"inspector: {probe}:" in m for m in lines) == 1, lines
    eager_dir = tmp_path / "eager"
    _train("eager", eager_dir, model_cls=TinyAttentionMoE)
    assert len(RunReader(eager_dir).to_pandas("expert_load")) == 2 * STEPS  # eager: both routers, every step
    assert len(RunReader(eager_dir).to_pandas("attention_stats")) > 0


def test_nested_tensor_encoder_activations(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """nn.TransformerEncoder in eval with a padding mask (nested-tensor fast path): activations of
    the real tokens are recorded, with no warning."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    x_BTD = torch.randn(3, 6, 16)
    pad_BT = torch.zeros(3, 6, dtype=torch.bool)
    pad_BT[0, 4:] = True
    pad_BT[2, 2:] = True
    seen: dict[str, bool] = {}
    spy = enc.layers[0].register_forward_hook(lambda m, a, o: seen.update(nested=o.is_nested))
    with caplog.at_level("WARNING", logger="inspector"):
        w = inspector.watch(enc, tmp_path, probes=["activations"], every=1)
        with torch.no_grad():
            enc(x_BTD, src_key_padding_mask=pad_BT)
        w.step()
        w.close()
    spy.remove()
    assert seen["nested"], "the fast path was not taken: the test does not cover nested outputs"
    assert not [r for r in caplog.records if "activations" in r.getMessage()]
    stats = RunReader(tmp_path).to_pandas("activation_stats")
    row = stats[stats["name"] == "layers.0"].iloc[0]
    with torch.no_grad():
        # reference: the same layer on each sequence's real tokens alone
        real = [enc.layers[0](x_BTD[i:i + 1, :n]) for i, n in enumerate((4, 6, 2))]
    ref_ND = torch.cat([r.reshape(-1, 16) for r in real]).numpy()
    np.testing.assert_allclose(row["mean"], ref_ND.mean(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(row["max"], ref_ND.max(), rtol=1e-4)


def _hf_llama_counts(watched: bool, run_dir) -> dict[str, int]:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = inspector.watch(model, run_dir, optimizer=opt, every=1) if watched else None
    compiled = torch.compile(model)
    gen = torch.Generator().manual_seed(1)
    try:
        for _ in range(3):
            x_BT = torch.randint(0, 64, (2, 8), generator=gen)
            loss = compiled(input_ids=x_BT, labels=x_BT).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if w is not None:
                w.step(loss=loss.detach())
    finally:
        if w is not None:
            w.close()
    return _counts()


def test_hugging_face_attention_adds_no_graph_or_recompile(tmp_path) -> None:
    """A Hugging Face Llama (sdpa, through the wrapped AttentionInterface) compiles to the same graphs
    watched as unwatched (the wrapper cache once guarded the graph: one recompile)."""
    unwatched = _hf_llama_counts(False, tmp_path / "none")
    assert unwatched["breaks"] == 0
    assert _hf_llama_counts(True, tmp_path / "watched") == unwatched, dict(counters["recompiles"])
