"""Inference mode on the engine's `BatchScheduler`: what the records say equals what the scheduler did.

Oracles, all taken by the test itself: a listener registered before the Inspector's and one after
it bracket every event in time (so each recorded latency must lie between the bounds the test
measured, however loaded the machine is); the scheduler's own requests (prompts, outputs, finish
reasons) and queue lengths; the cache formula of the issue; a forward hook of the test's own on
every router, counted with `np.bincount` per stage the test knows from the scheduler's events.
"""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import inspector
from inspector.views import inference as views
from inspector.views.live import LiveRun
from inspector_engine.config import get_config
from inspector_engine.inference import BatchScheduler, SamplingParams
from inspector_engine.model import Transformer

PROMPTS = [[5, 6, 7], list(range(10, 31)), [40, 41, 42, 43, 44, 45, 46], [7] * 12, [1, 2]]
MAX_NEW = [6, 4, 9, 3, 5]
STOP = 17


class Clock:
    """The test's own timestamps of every scheduler event: one listener before the Inspector's
    (`before`) and one after it (`after`), so the Inspector's clock reading lies between them."""

    def __init__(self) -> None:
        self.before: dict[tuple[str, int, int], float] = {}
        self.after: dict[tuple[str, int, int], float] = {}
        self.iterations: list[dict[str, Any]] = []
        self.stage = "none"
        self._decode_tokens = 0

    @staticmethod
    def _keys(event: str, obj: Any) -> list[tuple[str, int, int]]:
        if event == "submitted":
            return [("submitted", obj.id, 0)]
        if event == "tokens":
            return [("token", r.id, len(r.output)) for r in obj]
        return []

    def first(self, event: str, obj: Any) -> None:
        now = time.perf_counter()
        for key in self._keys(event, obj):
            self.before[key] = now
        if event == "prefill":
            self.stage = "prefill"
        elif event == "decode":
            self.stage = "decode"
            self._decode_tokens = sum(len(r.prompt) + len(r.output) for r in obj)

    def last(self, event: str, obj: Any) -> None:
        now = time.perf_counter()
        for key in self._keys(event, obj):
            self.after[key] = now
        if event == "iteration":
            self.iterations.append({"running": len(obj.running), "waiting": len(obj.waiting),
                                    "decode_cache_tokens": self._decode_tokens})
            self._decode_tokens = 0


class RouterTap:
    """Top-k expert ids of every router forward, by (stage, router name), from the test's own hooks."""

    def __init__(self, model: Transformer, clock: Clock) -> None:
        self.clock = clock
        self.names = {m: n for n, m in model.named_modules() if m in model.routers()}
        self.ids: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
        self.hooks_seen: list[int] = []   # forward hooks on the router at each call (this one included)
        self.handles = [r.register_forward_hook(self._hook) for r in model.routers()]

    def _hook(self, mod: torch.nn.Module, args: tuple, out: tuple) -> None:
        self.ids[(self.clock.stage, self.names[mod])].append(out[2].detach().numpy().reshape(-1).copy())
        self.hooks_seen.append(len(mod._forward_hooks))

    def counts(self, stage: str, name: str, n_experts: int) -> np.ndarray:
        return np.bincount(np.concatenate(self.ids[(stage, name)]), minlength=n_experts)


def _serve(tmp_path: Path, absorb: bool = False) -> tuple[Transformer, BatchScheduler, Clock, RouterTap, Path]:
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    if absorb:
        model.set_attn_impl("absorb")
    sched = BatchScheduler(model, max_batch_size=2, max_batch_tokens=64)
    clock = Clock()
    sched.add_listener(clock.first)
    run = tmp_path / "run"
    w = inspector.watch(model, run, mode="inference")
    w.observe(sched)
    sched.add_listener(clock.last)
    tap = RouterTap(model, clock)
    for i, (prompt, n) in enumerate(zip(PROMPTS, MAX_NEW)):
        sched.submit(prompt, n, SamplingParams(temperature=1.0, seed=i), stop_tokens=(STOP,))
    done = sched.run()
    w.close()
    return model, sched, clock, tap, run


def test_counts_latencies_cache_and_experts_equal_the_schedulers(tmp_path: Path) -> None:
    model, sched, clock, tap, path = _serve(tmp_path)
    run = LiveRun(path)
    reqs = views.requests_frame(run)
    iters = views.iterations_frame(run)
    done = {r: None for r in range(len(PROMPTS))}
    assert sorted(reqs["request_id"]) == sorted(done)

    # requests: prompt, output and finish reason as the scheduler has them
    for rid, prompt in enumerate(PROMPTS):
        row = views.request_row(reqs, rid)
        assert list(row["prompt_ids"]) == prompt and row["prompt_tokens"] == len(prompt)
    outputs = {row.request_id: list(row.output_ids) for row in reqs.itertuples()}
    reasons = {row.request_id: row.finished_reason for row in reqs.itertuples()}
    for rid, n in enumerate(MAX_NEW):
        out = outputs[rid]
        assert reqs.loc[reqs.request_id == rid, "generation_tokens"].item() == len(out)
        assert reasons[rid] == ("stop" if out[-1] == STOP else "length")
        assert len(out) == n or out[-1] == STOP

    # iterations: one per scheduler step; tokens and queue lengths as the scheduler's
    assert len(iters) == sched.steps == len(clock.iterations)
    assert iters["prompt_tokens"].sum() == sum(len(p) for p in PROMPTS)
    assert iters["prefill_requests"].sum() == len(PROMPTS)
    total_out = sum(len(o) for o in outputs.values())
    assert iters["generation_tokens"].sum() == total_out - len(PROMPTS)  # first tokens come from prefill
    assert iters["num_requests_running"].tolist() == [c["running"] for c in clock.iterations]
    assert iters["num_requests_waiting"].tolist() == [c["waiting"] for c in clock.iterations]
    assert iters["finished_requests"].sum() == len(PROMPTS)
    assert iters["batch_size"].max() == sched.peak_batch_size == 2

    # KV cache: (kv_lora_rank + qk_rope_head_dim) x layers x dtype size x tokens, at each decode
    cfg = model.cfg
    per_token = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * cfg.n_layers * 4
    decompressed = cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim) * cfg.n_layers * 4
    decodes = [(row, c) for row, c in zip(iters.itertuples(), clock.iterations) if c["decode_cache_tokens"]]
    assert decodes
    for row, c in decodes:
        assert row.kv_cache_tokens == c["decode_cache_tokens"]
        assert row.kv_cache_bytes == per_token * c["decode_cache_tokens"]
        assert row.kv_cache_decompressed_bytes == decompressed * c["decode_cache_tokens"]
        assert row.kv_cache_usage_perc == pytest.approx(c["decode_cache_tokens"] / 64)

    # latencies lie between the test's own bracketing timestamps
    for rid in range(len(PROMPTS)):
        row = views.request_row(reqs, rid)
        n = len(outputs[rid])
        arr_lo, arr_hi = clock.before[("submitted", rid, 0)], clock.after[("submitted", rid, 0)]
        first_lo, first_hi = clock.before[("token", rid, 1)], clock.after[("token", rid, 1)]
        assert first_lo - arr_hi <= row.time_to_first_token_s <= first_hi - arr_lo
        last_lo, last_hi = clock.before[("token", rid, n)], clock.after[("token", rid, n)]
        assert last_lo - arr_hi <= row.e2e_request_latency_s <= last_hi - arr_lo
        if n > 1:
            assert (last_lo - first_hi) / (n - 1) <= row.time_per_output_token_s <= (last_hi - first_lo) / (n - 1)
        times = np.asarray(row.token_times_s)
        assert len(times) == n and np.all(np.diff(times) >= 0)

    # expert load per stage = bincount of the routers' own choices in that stage, on the iterations
    # the Inspector hooks the routers (recorded ones) and on those it reads their own load buffer
    assert set(tap.hooks_seen) == {1, 2}
    for stage in ("prefill", "decode"):
        layers, names, counts = views.stage_counts(run, stage=stage)
        assert names, stage
        for name, got in zip(names, counts):
            want = tap.counts(stage, name, counts.shape[1])
            np.testing.assert_array_equal(got, want)
            assert want.sum() > 0
    # inference mode records attention but never judges collapse (a decode row is no training pathology)
    anomalies = inspector.open_run(path).to_pandas("anomaly")
    assert anomalies.empty or not (anomalies["kind"] == "attention_collapse").any()
    # a window of steps sums only those steps (split after the first decode record: each half holds one)
    frame = views.expert_stage_frame(run)
    recorded = sorted(frame[frame["stage"] == "decode"]["step"].unique())
    assert len(recorded) >= 2
    first_half = views.stage_counts(run, stage="decode", last=int(recorded[0]))[2]
    second_half = views.stage_counts(run, stage="decode", first=int(recorded[0]) + 1)[2]
    np.testing.assert_array_equal(first_half + second_half, views.stage_counts(run, stage="decode")[2])


def test_expert_counts_hold_when_pending_ids_are_folded_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids kept for bulk counting are folded into the counts once they pass a bound (long prefills):
    with the bound at 3 ids every forward folds, and the counts still equal the routers' choices."""
    import inspector.probes.experts.load as experts_load
    monkeypatch.setattr(experts_load, "FOLD_IDS_AT", 3)
    _, _, _, tap, path = _serve(tmp_path)
    run = LiveRun(path)
    for stage in ("prefill", "decode"):
        _, names, counts = views.stage_counts(run, stage=stage)
        assert names
        for name, got in zip(names, counts):
            np.testing.assert_array_equal(got, tap.counts(stage, name, counts.shape[1]))


def test_outputs_are_bit_identical_watched_and_unwatched(tmp_path: Path) -> None:
    def generate(watched: bool) -> list[list[int]]:
        torch.manual_seed(0)
        model = Transformer(get_config("debug")).eval()
        sched = BatchScheduler(model, max_batch_size=2, max_batch_tokens=64)
        w = inspector.watch(model, tmp_path / f"run{watched}", mode="inference", every=1) if watched else None
        if w is not None:
            w.observe(sched)
        for i, (prompt, n) in enumerate(zip(PROMPTS, MAX_NEW)):
            sched.submit(prompt, n, SamplingParams(temperature=1.0, seed=i))
        out = [r.output for r in sched.run()]
        if w is not None:
            w.close()
        return out

    assert generate(True) == generate(False)


def test_a_failing_driver_switches_the_probe_off_and_generation_goes_on(tmp_path: Path, caplog) -> None:
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    sched = BatchScheduler(model, max_batch_size=2, max_batch_tokens=64)
    w = inspector.watch(model, tmp_path / "run", mode="inference")
    w.observe(sched)

    def boom(*_: Any) -> None:
        raise RuntimeError("bookkeeping bug")

    w.inference.book.arrive = boom  # the Inspector's own bug, hit from inside the scheduler's submit
    sched.submit([1, 2, 3], 4)
    out = sched.run()
    w.close()
    assert len(out[0].output) == 4
    assert "inference probe switched off" in caplog.text
    anomalies = inspector.open_run(tmp_path / "run").to_pandas("anomaly")
    assert (anomalies["kind"] == "probe_error").sum() == 1


def test_a_scheduler_driver_times_forwards_from_its_events_with_the_model_hooks_off(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    sched = BatchScheduler(model, max_batch_size=2, max_batch_tokens=64)
    w = inspector.watch(model, tmp_path / "run", mode="inference")
    modules = [model, *model.layers]

    def hooks() -> list[int]:
        return [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in modules]

    hooked = hooks()
    driver = w.observe(sched)
    seen: list[list[int]] = []
    sched.add_listener(lambda event, obj: seen.append(hooks()) if event in ("prefill", "decode") else None)
    for prompt, n in zip(PROMPTS[:3], MAX_NEW[:3]):
        sched.submit(prompt, n)
    done = sched.run()
    driver.remove()
    after = hooks()
    with torch.no_grad():                                  # no driver: a top-level forward is an iteration
        model(torch.tensor([[3, 4, 5]]))
    w.close()
    # driven: neither the meter's hooks on the root nor the watchdog's on the root and the blocks
    assert hooked[0] == 4 and all(n == 1 for n in hooked[1:])
    assert seen and all(s == [0] * len(modules) for s in seen) and after == hooked
    it = inspector.open_run(tmp_path / "run").to_pandas("inference_iteration")
    assert it["prompt_tokens"].iloc[:-1].sum() == sum(len(p) for p in PROMPTS[:3])
    assert it["generation_tokens"].sum() == sum(len(r.output) - 1 for r in done)
    assert (it["decode_ms"].iloc[:-1] > 0).all() and it["prompt_tokens"].iloc[-1] == 3


def test_a_stalled_driven_forward_names_its_block_from_the_stack(tmp_path: Path) -> None:
    """With the watchdog's block hooks off (driven), a heartbeat written while a decode forward is
    stuck in a block still names that block (read from the serving thread's stack) and says
    "forward"; between forwards the rank is back in user code."""
    import threading

    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    sched = BatchScheduler(model, max_batch_size=2, max_batch_tokens=64)
    w = inspector.watch(model, tmp_path / "run", mode="inference", hang_after_s=600, heartbeat_s=600)
    driver = w.observe(sched)
    stuck = model.layers[1]
    seen: list[tuple[str, str]] = []
    stage: list[str] = []
    sched.add_listener(lambda event, obj: stage.append(event) if event in ("prefill", "decode") else None)
    original = stuck.forward

    def stalls(*args: Any, **kwargs: Any) -> Any:
        if stage and stage[-1] == "decode" and not seen:   # the first decode: another thread beats meanwhile
            hooks = len(stuck._forward_pre_hooks)
            beat = threading.Thread(target=lambda: seen.append((w.watchdog.heartbeat().phase,
                                                               w.watchdog.heartbeat().module, hooks)))
            beat.start()
            beat.join()
        return original(*args, **kwargs)

    stuck.forward = stalls
    try:
        sched.submit(PROMPTS[0], 3)
        sched.run()
        after = w.watchdog.heartbeat()
    finally:
        driver.remove()
        w.close()
    assert seen == [("forward", "layers.1", 0)]       # no hook on the block: its stack said it
    assert after.phase == "user" and after.module == ""


def test_an_idle_spell_between_bursts_is_no_iterations_time(tmp_path: Path) -> None:
    """Iterations of continuous serving are back to back (the loop's own work between forwards is
    some iteration's time); a server idle between two bursts adds that spell to no iteration."""
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    sched = BatchScheduler(model, max_batch_size=2, max_batch_tokens=64)
    w = inspector.watch(model, tmp_path / "run", mode="inference", probes=[], hang_after_s=None)
    driver = w.observe(sched)
    idle_s = 0.6
    t0 = time.perf_counter()
    sched.submit(PROMPTS[0], 5)
    sched.run()
    time.sleep(idle_s)                                   # nothing to serve
    sched.submit(PROMPTS[1], 5)
    sched.run()
    wall = time.perf_counter() - t0
    driver.remove()
    w.close()
    ms = inspector.open_run(tmp_path / "run").to_pandas("inference_iteration")["ms"]
    assert len(ms) >= 8 and (ms < idle_s * 1e3).all()
    assert ms.sum() / 1e3 <= wall - idle_s


def test_attention_and_expert_records_fall_on_different_iterations(tmp_path: Path) -> None:
    """The inference defaults offset the expert record by half a period from the attention maps, so
    no iteration carries both (a request's inter-token latency is inflated by one at a time)."""
    from inspector.inference.watch import inference_sampling

    *_, path = _serve(tmp_path)
    reader = inspector.open_run(path)
    last = int(reader.to_pandas("inference_iteration")["step"].max())
    attention = set(reader.to_pandas("attention_map")["step"].astype(int))
    experts = set(reader.to_pandas("expert_load_inference")["step"].astype(int)) - {last + 1}   # the closing record
    assert attention and experts, (attention, experts, last)
    assert all(s % 16 == 0 for s in attention) and all(s % 16 == 8 for s in experts)
    assert not attention & experts
    sampling = inference_sampling({"experts": 4}, offsets={})
    assert [s for s in range(10) if sampling.due("experts", s)] == [0, 4, 8]     # offsets are the user's to set
    assert [s for s in range(20) if inference_sampling(None).due("experts", s)] == [8]
    four = inference_sampling({"experts": 4})            # attention every 16, experts every 4: never together
    assert [s for s in range(16) if four.due("experts", s)] == [2, 6, 10, 14] and four.due("attention", 0)
    assert not any(four.due("experts", s) and four.due("attention", s) for s in range(200))
