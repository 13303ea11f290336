"""The engine's routers under an inference watch: their load is read from their own per-forward
buffer (`tokens_per_expert`), with no hook on the iterations the experts probe does not record.

Oracle: the test's own forward hook on every router, counted with `np.bincount` per stage (the
first forward is a prefill over the prompt, the rest decode one token each).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import inspector
from inspector.views import inference as views
from inspector.views.live import LiveRun
from inspector_engine.config import get_config
from inspector_engine.model import Transformer
from inspector_engine.model.cache import KVCache


def test_plain_forwards_count_every_token_once_and_hook_the_routers_only_when_recorded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    names = {m: n for n, m in model.named_modules() if m in model.routers()}
    stage = {"now": "prefill"}
    ids: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    hooks_seen: list[int] = []

    def tap(mod: torch.nn.Module, args: tuple, out: tuple) -> None:
        ids[(stage["now"], names[mod])].append(out[2].detach().numpy().reshape(-1).copy())
        hooks_seen.append(len(mod._forward_hooks))

    run = tmp_path / "run"
    w = inspector.watch(model, run, mode="inference", probes=["experts"], hang_after_s=None)
    for router in model.routers():
        router.register_forward_hook(tap)
    batch, prompt, new = 2, 5, 40
    cache = KVCache.for_model(model, batch, capacity=prompt + new)
    with torch.no_grad():
        tokens_BT = torch.randint(0, model.cfg.vocab_size, (batch, prompt))
        for _ in range(new):
            logits = model(tokens_BT, cache)
            stage["now"] = "decode"
            tokens_BT = logits[:, -1:].argmax(-1)
    w.close()

    # the Inspector's hooks were on for the first forward (every router must run once per forward for
    # its buffer to hold that forward's load) and the recorded iterations (every 16th: 8, 24 …)
    per_forward = [hooks_seen[i:i + len(names)] for i in range(0, len(hooks_seen), len(names))]
    with_inspector = [i for i, seen in enumerate(per_forward) if set(seen) == {2}]
    assert with_inspector == [0] + [i for i in range(new) if i % 16 == 8]
    assert all(set(seen) == {1} for i, seen in enumerate(per_forward) if i not in with_inspector)

    live = LiveRun(run)
    for st in ("prefill", "decode"):
        _, recorded, counts = views.stage_counts(live, stage=st)
        assert sorted(recorded) == sorted(names.values())
        for name, got in zip(recorded, counts):
            want = np.bincount(np.concatenate(ids[(st, name)]), minlength=counts.shape[1])
            np.testing.assert_array_equal(got, want)
    frame = views.expert_stage_frame(live)
    decode = frame[frame["stage"] == "decode"]
    assert decode["router_entropy"].notna().any()      # the recorded iterations' hooks measured it


def test_a_router_run_twice_in_a_forward_is_counted_from_its_hooks(tmp_path: Path, caplog) -> None:
    """A model whose router runs twice in one forward: its buffer holds only the second call, so the
    probe says so once and counts that router's ids with its hooks on every forward; every call's ids
    are counted."""
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    moe = next(m for m in model.modules() if hasattr(m, "router") and hasattr(m, "experts"))
    forward = moe.forward

    def twice(x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        moe.router(x_BTD.reshape(B * T, D), seq_len=T)          # a second routing of the same tokens
        return forward(x_BTD)
    moe.forward = twice
    names = {m: n for n, m in model.named_modules() if m in model.routers()}
    stage = {"now": "prefill"}
    ids: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for router in model.routers():
        router.register_forward_hook(
            lambda mod, args, out: ids[(stage["now"], names[mod])].append(out[2].detach().numpy().reshape(-1).copy()))
    run = tmp_path / "run"
    w = inspector.watch(model, run, mode="inference", probes=["experts"], hang_after_s=None)
    cache = KVCache.for_model(model, 2, capacity=30)
    with torch.no_grad(), caplog.at_level("WARNING", logger="inspector"):
        tokens_BT = torch.randint(0, model.cfg.vocab_size, (2, 4))
        for _ in range(20):
            logits = model(tokens_BT, cache)
            stage["now"] = "decode"
            tokens_BT = logits[:, -1:].argmax(-1)
    w.close()
    assert sum("ran 2 times in one forward" in r.getMessage() for r in caplog.records) == 1
    live = LiveRun(run)
    for st in ("prefill", "decode"):
        _, recorded, counts = views.stage_counts(live, stage=st)
        for name, got in zip(recorded, counts):
            want = np.bincount(np.concatenate(ids[(st, name)]), minlength=counts.shape[1])
            np.testing.assert_array_equal(got, want)


def _prefill_counts_match_router_ids(run: Path, ids: dict[str, list[np.ndarray]]) -> None:
    _, recorded, counts = views.stage_counts(LiveRun(run), stage="prefill")
    assert sorted(recorded) == sorted(ids)
    for name, got in zip(recorded, counts):
        np.testing.assert_array_equal(got, np.bincount(np.concatenate(ids[name]), minlength=counts.shape[1]))


def _router_ids(model: Transformer) -> dict[str, list[np.ndarray]]:
    names = {m: n for n, m in model.named_modules() if m in model.routers()}
    ids: dict[str, list[np.ndarray]] = defaultdict(list)
    for router in model.routers():
        router.register_forward_hook(
            lambda mod, args, out: ids[names[mod]].append(out[2].detach().numpy().reshape(-1).copy()))
    return ids


def test_a_bfloat16_model_is_counted_exactly_from_its_hooks(tmp_path: Path) -> None:
    """A model cast to bfloat16 casts the routers' load buffers too, and bfloat16 rounds a count
    above 256: the probe counts such routers from their hooks."""
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval().to(torch.bfloat16)
    ids = _router_ids(model)
    w = inspector.watch(model, tmp_path / "run", mode="inference", probes=["experts"], hang_after_s=None)
    with torch.no_grad():
        for _ in range(3):                                 # 1,600 tokens, top-2 of 8: ~400 per expert
            model(torch.randint(0, model.cfg.vocab_size, (8, 200)))
    w.close()
    _prefill_counts_match_router_ids(tmp_path / "run", ids)
    assert max(np.bincount(np.concatenate(v)).max() for v in ids.values()) > 300


def test_a_model_cast_after_the_watch_began_switches_to_hooks_and_keeps_the_load_read_so_far(
        tmp_path: Path, caplog) -> None:
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    ids = _router_ids(model)
    w = inspector.watch(model, tmp_path / "run", mode="inference", probes=["experts"], hang_after_s=None)
    vocab = model.cfg.vocab_size
    with torch.no_grad(), caplog.at_level("WARNING", logger="inspector"):
        for _ in range(2):                                 # the second is read from the float32 buffers
            model(torch.randint(0, vocab, (8, 200)))
        model.to(torch.bfloat16)
        model(torch.randint(0, vocab, (1, 8)))             # 16 ids: exact even in bfloat16
        for _ in range(2):
            model(torch.randint(0, vocab, (8, 200)))
    w.close()
    assert sum("buffers became bfloat16" in r.getMessage() for r in caplog.records) == 1
    _prefill_counts_match_router_ids(tmp_path / "run", ids)


def test_forward_loads_fold_their_ring_exactly() -> None:
    from inspector.probes.experts.load import RING_FORWARDS, ForwardLoads

    g = torch.Generator().manual_seed(3)
    want_RE = np.zeros((3, 8), dtype=np.float64)
    buffers = [torch.zeros(8) for _ in range(3)]
    rows = ForwardLoads(buffers)
    for _ in range(2 * RING_FORWARDS + 5):                 # two folds, then five forwards in the ring
        for b in buffers:                                    # the engine overwrites them every forward
            b.copy_(torch.randint(0, 1 << 20, (8,), generator=g))
        want_RE += np.stack([b.numpy() for b in buffers])
        rows.add(buffers)
    total = rows.take()
    assert total is not None and total.dtype == torch.float64
    np.testing.assert_array_equal(total.numpy(), want_RE)
    assert want_RE.max() > 1 << 24                          # beyond what a float32 sum holds exactly
    assert rows.take() is None                              # a new window starts empty
    rows.add(buffers)
    np.testing.assert_array_equal(rows.take().numpy(), np.stack([b.numpy() for b in buffers]))
