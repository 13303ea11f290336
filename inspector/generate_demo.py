"""`inspector generate`: the engine's batched generation, recorded in inference mode with `--inspect RUN_DIR`.

The engine never imports the Inspector (ARCHITECTURE rule 3), so `python -m inspector_engine.generate`
stays as it was; this command joins the two, like `inspector demo` does for training. Without
`--prompt` it serves `--requests` prompts cut from the bundled corpus, of varied lengths, through
the engine's continuous-batching `BatchScheduler`, so a run has queueing, batching and a spread
of latencies to look at.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import inspector


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `inspector generate`."""
    p.add_argument("--inspect", metavar="RUN_DIR", default=None,
                   help="record the generation into RUN_DIR (inference mode) for `inspector dash` / `tui`")
    p.add_argument("--ckpt", default=None, help="engine training checkpoint (ckpt_*.pt; loaded weights-only)")
    p.add_argument("--config", default="tiny", help="random-init engine config when no --ckpt (debug, tiny, small)")
    p.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable); default: corpus slices")
    p.add_argument("--requests", type=int, default=24, help="corpus prompts to serve when no --prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--absorb", action="store_true", help="weight-absorbed MLA decoding")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-batch-tokens", type=int, default=4096)
    p.add_argument("--device", default="auto")
    p.add_argument("--attention-every", type=int, default=None, help="attention map every N iterations")
    p.add_argument("--quiet", action="store_true", help="do not print the generated texts")


def corpus_prompts(n: int, seed: int) -> list[str]:
    """`n` prompts cut from the bundled corpus at random places, 8 to 192 bytes long."""
    import torch

    from inspector_engine.data import load_bytes

    data = load_bytes()
    g = torch.Generator().manual_seed(seed)
    prompts: list[str] = []
    for _ in range(n):
        length = int(torch.randint(8, 193, (1,), generator=g))
        start = int(torch.randint(0, max(int(data.numel()) - length, 1), (1,), generator=g))
        prompts.append(bytes(data[start:start + length].tolist()).decode("utf-8", errors="replace"))
    return prompts


def run(a: argparse.Namespace) -> int:
    """Generate (and record, with `--inspect`); prints tokens/s and where the run is."""
    import torch

    from inspector_engine.config import get_config
    from inspector_engine.inference import BatchScheduler, SamplingParams
    from inspector_engine.model import Transformer
    from inspector_engine.tokenizer import ByteTokenizer
    from inspector_engine.training.checkpoint import load_model
    from inspector_engine.training.distributed import resolve_device

    device = resolve_device(a.device)
    if a.ckpt:
        model = load_model(a.ckpt, device)
    else:
        print(f"inspector generate: no --ckpt: random-init {a.config!r} weights", file=sys.stderr)
        torch.manual_seed(a.seed)
        model = Transformer(get_config(a.config)).to(device).eval()
    if a.absorb:
        model.set_attn_impl("absorb")
    tok = ByteTokenizer()
    prompts = a.prompt or corpus_prompts(a.requests, a.seed)
    sched = BatchScheduler(model, a.max_batch_size, a.max_batch_tokens)
    watch: Any = None
    if a.inspect:
        every = {"attention": a.attention_every} if a.attention_every else None
        watch = inspector.watch(model, a.inspect, mode="inference", tokenizer=tok, every=every,
                                config={"command": "generate", "config": a.config, "ckpt": a.ckpt,
                                        "absorb": a.absorb, "max_batch_size": a.max_batch_size,
                                        "max_batch_tokens": a.max_batch_tokens})
        watch.observe(sched)
    t0 = time.perf_counter()
    try:
        for i, p in enumerate(prompts):
            sched.submit(tok.encode(p), a.max_new_tokens, SamplingParams(a.temperature, a.top_k, a.top_p, a.seed + i))
        done = sched.run()
    finally:
        if watch is not None:
            watch.close()
    dt = time.perf_counter() - t0
    if not a.quiet:
        for p, req in zip(prompts, done):
            print(f"=== request {req.id} ({req.finish_reason})\n{p}{tok.decode(req.output)}\n")
    n = sum(len(r.output) for r in done)
    print(f"inspector generate: {len(done)} requests, {n} tokens in {dt:.2f}s ({n / dt:.1f} tokens/s)", file=sys.stderr)
    if a.inspect:
        print(f"inspector generate: recorded {Path(a.inspect)}; open it with: inspector dash {a.inspect}", file=sys.stderr)
    return 0
