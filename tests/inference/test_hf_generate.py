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


class StopRowZeroAfter(transformers.StoppingCriteria if transformers else object):  # type: ignore[misc]
    """Ends row 0 once it has `n` new tokens (a stop string would do the same): `generate()` then
    feeds that row pad tokens until the batch is done."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        done[0] = input_ids.shape[1] >= PROMPT_LEN + self.n
        return done


def test_a_row_a_stopping_criterion_ends_is_stopped_not_padded(tmp_path: Path) -> None:
    """A row ended by a stopping criterion (a stop string) gets pad tokens from `generate()`: the
    request stops at its last real token ("stop"), the pads are not its output."""
    ids = torch.randint(1, 60, (2, PROMPT_LEN), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        free = _model(None).generate(ids, max_new_tokens=NEW, do_sample=False)
    eos = next(t for t in range(1, 64) if t not in free[:, PROMPT_LEN:].tolist()[0] + free[:, PROMPT_LEN:].tolist()[1])
    assert 0 not in free[:, PROMPT_LEN:].tolist()[0]      # the pad id is no real output here
    model = _model(eos)
    w = inspector.watch(model, tmp_path / "run", mode="inference")
    criteria = transformers.StoppingCriteriaList([StopRowZeroAfter(2)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW, do_sample=False, stopping_criteria=criteria,
                             streamer=w.streamer())
    w.close()
    new = out[:, PROMPT_LEN:].tolist()
    assert new[0][2:] == [0] * (len(new[0]) - 2)          # generate() padded row 0 after its stop
    reqs = views.requests_frame(LiveRun(tmp_path / "run"))
    assert list(zip(reqs["generation_tokens"], reqs["finished_reason"])) == [(2, "stop"), (NEW, "length")]
    assert list(reqs["output_ids"].iloc[0]) == new[0][:2]
