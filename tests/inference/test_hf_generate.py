"""Hugging Face `generate()` in inference mode through the watch's streamer: requests, finish
reasons and token counts equal what `generate()` returned, outputs are unchanged, and per-stage
expert load / iteration counts follow the decoding steps.

The end-of-sequence token is picked from an unwatched greedy run (the token row 1 produces third),
so the test knows beforehand which row stops ("stop") and which runs to the length limit.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import inspector
from inspector.views import inference as views
from inspector.views.live import LiveRun

transformers = pytest.importorskip("transformers")

PROMPT_LEN, NEW = 7, 6


def _model(eos: int | None) -> "transformers.LlamaForCausalLM":
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   initializer_range=0.3, pad_token_id=0, eos_token_id=eos)
    return transformers.LlamaForCausalLM(cfg).eval()


def _expected(out: torch.Tensor, eos: int) -> list[tuple[int, str]]:
    """(generated tokens, finish reason) per row, as generate() produced them."""
    rows = []
    for row in out[:, PROMPT_LEN:].tolist():
        n = row.index(eos) + 1 if eos in row else len(row)
        rows.append((n, "stop" if eos in row else "length"))
    return rows


def test_generate_requests_finish_reasons_and_iterations(tmp_path: Path) -> None:
    ids = torch.randint(1, 60, (2, PROMPT_LEN), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        free = _model(None).generate(ids, max_new_tokens=NEW, do_sample=False)
    row1 = free[1, PROMPT_LEN:].tolist()
    eos = row1[2]
    assert eos not in row1[:2]
    model = _model(eos)
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=NEW, do_sample=False)
    w = inspector.watch(model, tmp_path / "run", mode="inference")
    with torch.no_grad():
        watched = model.generate(ids, max_new_tokens=NEW, do_sample=False, streamer=w.streamer())
    w.close()
    assert torch.equal(plain, watched)
    expected = _expected(watched, eos)
    assert expected[1] == (3, "stop")
    run = LiveRun(tmp_path / "run")
    reqs = views.requests_frame(run)
    assert list(zip(reqs["generation_tokens"], reqs["finished_reason"])) == expected
    assert reqs["prompt_tokens"].tolist() == [PROMPT_LEN, PROMPT_LEN]
    for row, r in enumerate(reqs.itertuples()):
        assert list(r.output_ids) == watched[row, PROMPT_LEN:PROMPT_LEN + expected[row][0]].tolist()
    iters = views.iterations_frame(run)
    steps = watched.shape[1] - PROMPT_LEN           # one iteration per generated position
    assert len(iters) == steps
    assert iters["prompt_tokens"].tolist() == [2 * PROMPT_LEN] + [0] * (steps - 1)
    assert iters["generation_tokens"].sum() == 2 * (steps - 1)   # HF decodes finished rows too (padding)
    assert iters["num_requests_running"].tolist()[:3] == [2, 2, 1]
    assert iters["finished_requests"].sum() == 2
    # the HF cache holds per-head keys and values: bytes as stored equal the decompressed figure
    assert (iters["kv_cache_bytes"] == iters["kv_cache_decompressed_bytes"]).all()
    per_token = 2 * 2 * (32 // 4) * 2 * 4    # layers x (k, v) x head_dim x kv heads x fp32
    last = iters.iloc[-1]
    assert last["kv_cache_bytes"] == per_token * 2 * (watched.shape[1] - 1)


def test_a_forward_without_a_driver_is_one_iteration(tmp_path: Path) -> None:
    model = _model(None)
    w = inspector.watch(model, tmp_path / "run", mode="inference")
    with torch.no_grad():
        model(torch.randint(1, 60, (1, 5)))
        model(torch.randint(1, 60, (3, 4)))
    w.close()
    iters = views.iterations_frame(LiveRun(tmp_path / "run"))
    assert iters["prompt_tokens"].tolist() == [5, 12] and iters["prefill_requests"].tolist() == [1, 3]
    assert iters["step"].tolist() == [0, 1]
