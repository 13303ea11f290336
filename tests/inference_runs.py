"""A seeded, fully deterministic inference-mode run written through the Recorder (for SVG snapshots,
where real latencies would change every run): 6 requests served two at a time with fixed
latencies, iterations with batch and KV-cache numbers, expert load by stage with decode
overloading expert 5 of layer 1, and one decode attention map per iteration over the cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from inspector.schema import EXPERT_LOAD_INFERENCE, INFERENCE_ITERATION, INFERENCE_REQUEST
from inspector.store.recorder import Recorder

T0 = 1_799_999_000.0
WORDS = "the quick brown fox jumps over the lazy dog and runs far away".split()


def write_inference_run(path: Path, requests: int = 6, new_tokens: int = 8) -> None:
    """Write the run described in the module docstring into `path`."""
    rng = np.random.default_rng(0)
    with Recorder(path, name="inference-synthetic", heartbeat_s=0) as rec:
        step = 0
        for pair in range(0, requests, 2):
            ids = [pair, pair + 1]
            prompts = {i: [WORDS[(i + j) % len(WORDS)] + " " for j in range(3 + i)] for i in ids}
            for k in range(new_tokens):
                batch = len(ids)
                cache_tokens = sum(len(prompts[i]) + k + 1 for i in ids)
                rec.submit(INFERENCE_ITERATION, {
                    "ms": 20.0 + 5 * (k == 0), "batch_size": batch, "prompt_tokens": sum(len(prompts[i]) for i in ids) if k == 0 else 0,
                    "generation_tokens": 0 if k == 0 else batch, "prefill_ms": 8.0 if k == 0 else 0.0,
                    "decode_ms": 0.0 if k == 0 else 15.0, "prefill_requests": batch if k == 0 else 0,
                    "num_requests_running": batch, "num_requests_waiting": requests - pair - 2,
                    "finished_requests": batch if k == new_tokens - 1 else 0, "kv_cache_tokens": cache_tokens,
                    "kv_cache_bytes": cache_tokens * 576, "kv_cache_allocated_bytes": 64 * 576,
                    "kv_cache_decompressed_bytes": cache_tokens * 4096, "kv_cache_usage_perc": cache_tokens / 64,
                    "attn_request": ids[k % 2], "attn_query_start": len(prompts[ids[k % 2]]) + k - 1 if k else 0,
                    "attn_query_tokens": 1 if k else len(prompts[ids[0]]), "wall_time": T0 + step * 0.02}, 1, step)
                for stage in ("prefill", "decode"):
                    counts = rng.integers(20, 40, size=(2, 8))
                    if stage == "decode":
                        counts[0, 5] += 120
                    rec.submit(EXPERT_LOAD_INFERENCE, {
                        "name": ["layers.1.ffn.router", "layers.2.ffn.router"], "layer": [1, 2], "stage": stage,
                        "counts": counts, "imbalance": counts.max(1) / counts.mean(1),
                        "cv": counts.std(1) / counts.mean(1)}, 2, step)
                rid = ids[k % 2]
                keys = len(prompts[ids[0]]) if k == 0 else len(prompts[rid]) + k
                offset = max(len(prompts[i]) for i in ids) + k - keys if k else 0
                rows = keys if k == 0 else 1
                probs = rng.dirichlet(np.ones(keys + offset) * 0.3, size=(2, rows)).astype(np.float32)
                probs[..., :offset] = 0
                probs /= probs.sum(-1, keepdims=True)
                rec.attention_map("layers.0.attn.qk_capture", probs, layer=0, heads=[0, 1], step=step)
                step += 1
            for n, i in enumerate(ids):
                gaps = 0.015 + 0.001 * np.arange(new_tokens)
                times = 0.05 * pair + 0.03 + 0.01 * i + np.concatenate([[0.0], np.cumsum(gaps[1:])])
                rec.submit(INFERENCE_REQUEST, {
                    "request_id": i, "prompt_tokens": len(prompts[i]), "generation_tokens": new_tokens,
                    "arrival_time": T0, "queue_time_s": 0.05 * pair, "time_to_first_token_s": float(times[0]),
                    "time_per_output_token_s": float(np.mean(gaps[1:])),
                    "inter_token_latency_p50_s": float(np.percentile(gaps[1:], 50)),
                    "inter_token_latency_p95_s": float(np.percentile(gaps[1:], 95)),
                    "e2e_request_latency_s": float(times[-1]), "finished_reason": "length" if i % 3 else "stop",
                    "token_times_s": times, "prompt_ids": list(range(len(prompts[i]))),
                    "output_ids": list(range(new_tokens)), "prompt_text": prompts[i],
                    "output_text": [WORDS[(i * 3 + j) % len(WORDS)] + " " for j in range(new_tokens)],
                    "wall_time": T0 + step * 0.02}, 1, step - 1)
