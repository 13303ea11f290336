"""Engine speed benchmark: training tokens/s, and decode tokens/s with and without the KV cache.

Usage::

    python benchmarks/engine_bench.py                       # tiny on CPU
    python benchmarks/engine_bench.py --config small --device cuda --batch-size 16 --seq-len 1024

Decode numbers are batch-1, decode-only: after a prompt of L tokens, ``--new-tokens`` tokens are
generated greedily. "no cache" re-runs the whole sequence for every token; "cache" feeds one token
against the MLA latent cache, either up-projecting cached latents ("decompress") or with the
weight-absorbed kernels ("absorb"). Ratios are against the no-cache baseline of the same run.
On CUDA the training table adds MFU = achieved model FLOP/s / peak bf16 FLOP/s, with model FLOPs
per token = 6 * active non-embedding parameters + 6 * n_layers * n_heads * (qk_head_dim +
v_head_dim) * seq_len (PaLM-style, attention counted without the causal halving).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from inspector_engine.config import get_config
from inspector_engine.model import KVCache, Transformer
from inspector_engine.training import TrainConfig, Trainer
from inspector_engine.training.distributed import resolve_device

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    """Dense bf16 peak of the GPU (table lookup by name), or the override."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def flops_per_token(model: Transformer, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), see the module docstring."""
    cfg = model.cfg
    dense = 6 * model.num_parameters(active=True, include_embedding=False)
    attn = 6 * cfg.n_layers * cfg.n_heads * (cfg.qk_head_dim + cfg.v_head_dim) * seq_len
    return float(dense + attn)


def bench_training(args: argparse.Namespace, device: torch.device) -> None:
    """Median tokens/s of ``--train-steps`` optimizer steps, with and without activation checkpointing."""
    print(f"\n== training: config {args.config}, device {device}, batch {args.batch_size} x seq {args.seq_len}"
          f" ({'bf16 autocast' if device.type == 'cuda' else 'fp32'}) ==")
    peak = peak_tflops(device, args.peak_tflops)
    header = f"{'variant':<28}{'tokens/s':>12}{'ratio':>8}"
    print(header + (f"{'MFU':>8}" if peak else ""))
    base = None
    for ckpt in (False, True):
        cfg = TrainConfig(steps=args.train_steps + 2, batch_size=args.batch_size, seq_len=args.seq_len,
                          eval_every=0, progress=False, device=str(device), activation_checkpointing=ckpt)
        trainer = Trainer(get_config(args.config), cfg)
        for _ in range(2):  # warm-up
            trainer.train_step()
        rates = []
        for _ in range(args.train_steps):
            _sync(device)
            rates.append(trainer.train_step()["tokens_per_s"])
        rate = statistics.median(rates)
        base = base or rate
        name = "activation checkpointing" if ckpt else "plain"
        line = f"{name:<28}{rate:>12.0f}{rate / base:>7.2f}x"
        if peak:
            mfu = rate * flops_per_token(trainer.model, args.seq_len) / (peak * 1e12)
            line += f"{100 * mfu:>7.1f}%"
        print(line)
        del trainer
    if device.type == "cuda" and not peak:
        print("(MFU: unknown GPU, pass --peak-tflops)")


@torch.no_grad()
def _decode_seconds(model: Transformer, prompt_1T: torch.Tensor, new: int, mode: str, dtype: torch.dtype) -> float:
    device = prompt_1T.device
    if mode == "no cache":
        seq = prompt_1T
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(new):
            tok = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, tok], dim=1)
        _sync(device)
        return time.perf_counter() - t0
    model.set_attn_impl("absorb" if mode == "absorb" else "decompress")
    cache = KVCache.for_model(model, 1, capacity=prompt_1T.shape[1] + new, dtype=dtype)
    tok = model(prompt_1T, cache)[:, -1].argmax(-1, keepdim=True)  # prefill: not timed
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(new):
        tok = model(tok, cache)[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    return time.perf_counter() - t0


def bench_decode(args: argparse.Namespace, device: torch.device) -> None:
    """Decode tokens/s at each context length for no-cache / cache (decompress) / cache (absorb)."""
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    model = Transformer(get_config(args.config)).to(device=device, dtype=dtype).eval()
    modes = ["no cache", "decompress", "absorb"]
    print(f"\n== decode: config {args.config}, device {device}, {args.dtype}, batch 1, "
          f"{args.new_tokens} new tokens after a prompt of L tokens (best of {args.repeats}) ==")
    print(f"{'L':>6}{'no cache tok/s':>16}{'cache tok/s':>13}{'speedup':>9}{'absorb tok/s':>14}{'speedup':>9}"
          f"{'cache KiB':>11}")
    kv_bytes = KVCache.for_model(model, 1, dtype=dtype).bytes_per_token()
    for L in args.lengths:
        if L + args.new_tokens > model.cfg.max_seq_len:
            print(f"{L:>6}  (skipped: exceeds max_seq_len {model.cfg.max_seq_len})")
            continue
        prompt = torch.randint(0, model.cfg.vocab_size, (1, L), device=device)
        _decode_seconds(model, prompt[:, :8], 2, "decompress", dtype)  # warm-up
        secs = {m: min(_decode_seconds(model, prompt, args.new_tokens, m, dtype) for _ in range(args.repeats))
                for m in modes}
        rate = {m: args.new_tokens / s for m, s in secs.items()}
        base = rate["no cache"]
        print(f"{L:>6}{base:>16.1f}{rate['decompress']:>13.1f}{rate['decompress'] / base:>8.1f}x"
              f"{rate['absorb']:>14.1f}{rate['absorb'] / base:>8.1f}x{(L + args.new_tokens) * kv_bytes / 1024:>11.1f}")


def main() -> None:
    """Parse arguments and run both benchmarks."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=8)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="decode dtype (default: bf16 on CUDA)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's peak bf16 TFLOP/s")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-decode", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    if not args.skip_train:
        bench_training(args, device)
    if not args.skip_decode:
        bench_decode(args, device)


if __name__ == "__main__":
    main()
