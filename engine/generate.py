"""``python -m inspector_engine.generate``: sample text from a trained checkpoint (or a random-init config).

Examples::

    python -m inspector_engine.generate --ckpt runs/tiny/ckpt_0000300.pt --prompt "ROMEO:" --temperature 0.8 --top-k 40
    python -m inspector_engine.generate --ckpt runs/tiny/ckpt_0000300.pt --prompt "HAMLET:" --prompt "KING:" --max-batch-size 2
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from inspector_engine.config import get_config, list_configs
from inspector_engine.inference import BatchScheduler, SamplingParams, generate
from inspector_engine.model import Transformer
from inspector_engine.tokenizer import ByteTokenizer
from inspector_engine.training.checkpoint import load_model
from inspector_engine.training.distributed import resolve_device


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m inspector_engine.generate", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=None, help="training checkpoint (ckpt_*.pt)")
    p.add_argument("--config", default="tiny", choices=list_configs(), help="random-init model when no --ckpt")
    p.add_argument("--prompt", action="append", default=None, help="repeat for several requests (batched)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute the full sequence every token")
    p.add_argument("--absorb", action="store_true", help="weight-absorbed MLA decoding")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-batch-tokens", type=int, default=8192)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--inspect", metavar="RUN_DIR", default=None,
                   help="record into RUN_DIR: run `inspector generate --inspect RUN_DIR` (its model, prompt and sampling flags) instead")
    return p


def main(argv: list[str] | None = None) -> int:
    """Generate and print continuations."""
    a = build_parser().parse_args(argv)
    if a.inspect:
        print("error: the engine does not import the inspector; record with "
              f"`inspector generate --inspect {a.inspect}` (the same model, prompt and sampling flags)", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    if a.ckpt:
        model = load_model(a.ckpt, device)
    else:
        print(f"[inspector_engine.generate] no --ckpt: random-init {a.config!r} weights", file=sys.stderr)
        torch.manual_seed(a.seed)
        model = Transformer(get_config(a.config)).to(device).eval()
    if a.absorb:
        model.set_attn_impl("absorb")
    tok = ByteTokenizer()
    prompts = a.prompt or ["\n"]
    params = SamplingParams(a.temperature, a.top_k, a.top_p, a.seed)
    t0 = time.perf_counter()
    if len(prompts) == 1 or a.no_cache:
        outs = [generate(model, tok.encode_tensor(p)[None], a.max_new_tokens, params, use_cache=not a.no_cache)[0,
                len(tok.encode(p)):].tolist() for p in prompts]
    else:
        sched = BatchScheduler(model, a.max_batch_size, a.max_batch_tokens)
        for p in prompts:
            sched.submit(tok.encode(p), a.max_new_tokens, params)
        outs = [r.output for r in sched.run()]
    dt = time.perf_counter() - t0
    for p, out in zip(prompts, outs):
        print(f"=== {p!r}\n{p}{tok.decode(out)}\n")
    n = sum(len(o) for o in outs)
    print(f"[inspector_engine.generate] {n} tokens in {dt:.2f}s ({n / dt:.1f} tokens/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
