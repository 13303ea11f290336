"""`inspector.watch` never changes what a Hugging Face transformers model computes.

The reference is the same model unwatched: outputs must be bit-identical watched, in fp32 and
under bf16 autocast, for sdpa and eager attention, for every architecture of the installed
transformers that builds from a tiny config on the CPU (the zoo below; skipped ones say why, see
`pytest -ra`, and `benchmarks/hf_zoo.py` prints the whole table), and for any order of opening and
closing several watches. The attention maps recorded meanwhile are checked against the model's
own eager attention weights (`output_attentions=True`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import inspector

transformers = pytest.importorskip("transformers")
from transformers import AttentionInterface, GPT2Config, GPT2Model, LlamaConfig, LlamaForCausalLM  # noqa: E402

from tests.hf_zoo_configs import PROBES, ZooEntry, ZooResult, forward, run_zoo, same, zoo_types  # noqa: E402

_ORIGINAL_LOOKUP = (AttentionInterface.get_interface, AttentionInterface.__getitem__)


def _restored() -> bool:
    """transformers' attention lookup is its own again and no extra name is registered."""
    names = list(AttentionInterface._global_mapping)
    return ((AttentionInterface.get_interface, AttentionInterface.__getitem__) == _ORIGINAL_LOOKUP
            and not any(n.startswith("inspector") for n in names))


def _gpt2(impl: str, reorder: bool = False) -> GPT2Model:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64, initializer_range=0.2,
                     reorder_and_upcast_attn=reorder, attn_implementation=impl)
    return GPT2Model(cfg).eval()


def _llama(impl: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.3, attn_implementation=impl)
    return LlamaForCausalLM(cfg).eval()


def _ids(vocab: int = 64, n: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"input_ids": torch.randint(0, vocab, (2, n), generator=g)}


def _maps(run: Path, step: int = 0) -> list[tuple[str, int]]:
    rows = inspector.open_run(run).blob_rows(step=step)
    return sorted((r["name"], r["layer"]) for r in rows)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_gpt2_reorder_and_upcast_attn_is_bit_identical_watched(tmp_path: Path, bf16: bool) -> None:
    """GPT-2 takes its upcast-and-reorder path only when the implementation is named "eager"."""
    model = _gpt2("eager", reorder=True)
    inputs = _ids(128)
    before = forward(model, inputs, bf16)
    w = inspector.watch(model, tmp_path / "run", probes=PROBES, every=1)
    during = forward(model, inputs, bf16)
    w.step()
    w.close()
    assert same(during, before)
    assert same(forward(model, inputs, bf16), before) and _restored()


def test_output_attentions_on_a_watched_eager_model(tmp_path: Path) -> None:
    """`config.output_attentions = True` works while watched; the maps equal the weights it returns."""
    model = _llama("eager")
    inputs = _ids()
    w = inspector.watch(model, tmp_path / "run", probes=["attention"], every=1)
    assert w.not_applicable == {}
    model.config.output_attentions = True
    with torch.no_grad():
        out = model(**inputs)
    w.step()
    w.close()
    model.config.output_attentions = False
    assert model.config._attn_implementation == "eager" and _restored()
    assert len(out.attentions) == 2
    with torch.no_grad():
        assert torch.equal(model(**inputs, output_attentions=True).logits, out.logits)
    reader = inspector.open_run(tmp_path / "run")
    for layer in (0, 1):
        probs, row = reader.fetch(step=0, layer=layer)
        assert row["name"] == f"model.layers.{layer}.self_attn"
        ref = out.attentions[layer][0].numpy()
        assert ref.std() > 0.05  # far from uniform: the comparison means something
        np.testing.assert_allclose(probs.astype(np.float32), ref, atol=2e-3)


@pytest.mark.parametrize("order", ["oldest-first", "newest-first"])
def test_two_watches_on_one_model_close_in_any_order(tmp_path: Path, order: str) -> None:
    model = _llama("sdpa")
    inputs = _ids()
    before = forward(model, inputs, bf16=False)
    first = inspector.watch(model, tmp_path / "a", probes=["attention"], every=1)
    second = inspector.watch(model, tmp_path / "b", probes=["attention"], every=1)
    assert same(forward(model, inputs, bf16=False), before)
    first.step()
    second.step()
    closing = [first, second] if order == "oldest-first" else [second, first]
    closing[0].close()
    assert same(forward(model, inputs, bf16=False), before)  # the other watch still open
    closing[1].step()
    closing[1].close()
    assert same(forward(model, inputs, bf16=False), before) and _restored()
    expected = [("model.layers.0.self_attn", 0), ("model.layers.1.self_attn", 1)]
    assert _maps(tmp_path / "a") == _maps(tmp_path / "b") == expected
    assert _maps(closing[1].run_dir, step=1) == expected  # recorded alone after the other closed


def test_watches_on_two_models_and_an_unwatched_one(tmp_path: Path) -> None:
    """Each watch records its own model only; a model nobody watches is untouched and unrecorded;
    switching the implementation while watched keeps recording."""
    llama, gpt2, bystander = _llama("sdpa"), _gpt2("sdpa"), _llama("eager")
    inputs = _ids()
    refs = [forward(m, inputs, bf16=False) for m in (llama, gpt2, bystander)]
    gpt2.set_attn_implementation("eager")
    gpt2_eager = forward(gpt2, inputs, bf16=False)
    gpt2.set_attn_implementation("sdpa")
    wl = inspector.watch(llama, tmp_path / "llama", probes=["attention"], every=1)
    wg = inspector.watch(gpt2, tmp_path / "gpt2", probes=["attention"], every=1)
    for model, ref in zip((llama, gpt2, bystander), refs):
        assert same(forward(model, inputs, bf16=False), ref)
    wl.step()
    wg.step()
    wl.close()
    gpt2.set_attn_implementation("eager")
    assert same(forward(gpt2, inputs, bf16=False), gpt2_eager)
    wg.step()
    wg.close()
    assert _restored()
    assert _maps(tmp_path / "llama") == [("model.layers.0.self_attn", 0), ("model.layers.1.self_attn", 1)]
    assert _maps(tmp_path / "gpt2") == [("h.0.attn", 0), ("h.1.attn", 1)]
    assert _maps(tmp_path / "gpt2", step=1) == [("h.0.attn", 0), ("h.1.attn", 1)]


# ---- the zoo -------------------------------------------------------------------------------------

ZOO = zoo_types()
ZOO_TEST = "test_zoo_watched_outputs_are_bit_identical"


@pytest.fixture(scope="module")
def zoo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ZooResult]:
    """The selected architectures' results, run once (in worker processes: `run_zoo`)."""
    selected = [item.callspec.params["entry"] for item in request.session.items
                if getattr(item, "originalname", None) == ZOO_TEST and hasattr(item, "callspec")]
    done = run_zoo(selected, tmp_path_factory.mktemp("zoo"))
    return {label: result for label, (result, _) in done.items()}


@pytest.mark.slow
@pytest.mark.parametrize("entry", ZOO, ids=[e.label for e in ZOO])
def test_zoo_watched_outputs_are_bit_identical(zoo: dict[str, ZooResult], entry: ZooEntry) -> None:
    result = zoo[entry.label]
    if result.status == "skipped":
        pytest.skip(f"{entry.label}: {result.reason}")
    assert result.status == "same", f"{entry.label}: {result.reason}"


MIN_RUN = 300
"""Architectures the zoo must run (not skip) when it runs whole (4xx of 6xx with transformers 5.25)."""


@pytest.mark.slow
def test_zoo_ran_most_architectures(zoo: dict[str, ZooResult]) -> None:
    """The harness cannot quietly skip its way to green: most architectures really ran, and the
    attention probe recorded maps in most of those."""
    if len(zoo) < len(ZOO):
        pytest.skip("the zoo did not run whole in this session")
    ran = [r for r in zoo.values() if r.status != "skipped"]
    assert len(ran) >= MIN_RUN, f"only {len(ran)} of {len(ZOO)} architectures ran"
    assert sum(r.maps > 0 for r in ran) >= 0.6 * len(ran)
