"""``python -m inspector_engine.train``: train a named config on the bundled corpus (``torchrun`` for DDP).

Examples::

    python -m inspector_engine.train --config tiny --steps 300 --out runs/tiny
    python -m inspector_engine.train --config tiny --steps 600 --out runs/tiny --resume
    python -m torch.distributed.run --nproc_per_node 2 -m inspector_engine.train --config debug --steps 50
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspector_engine.config import get_config, list_configs
from inspector_engine.training import JsonlLogger, TrainConfig, Trainer

__all__ = ["Trainer", "TrainConfig", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options; defaults come from `TrainConfig`."""
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m inspector_engine.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", choices=list_configs())
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per micro-batch per process")
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="0 disables evaluation")
    p.add_argument("--eval-batches", type=int, default=d.eval_batches)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="0: only a final checkpoint")
    p.add_argument("--out", default=None, help="output directory (checkpoints, metrics.jsonl)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="resume from a checkpoint path, or (no value) the latest one in --out")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--lora-rank", type=int, default=0, help="train only LoRA adapters of this rank")
    p.add_argument("--init-from", default=None, help="checkpoint whose weights initialise the model")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="disable the tqdm progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, print a one-line summary."""
    a = build_parser().parse_args(argv)
    cfg = TrainConfig(
        steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len, lr=a.lr, warmup_steps=a.warmup_steps,
        grad_accum=a.grad_accum, eval_every=a.eval_every, eval_batches=a.eval_batches, ckpt_every=a.ckpt_every,
        out_dir=a.out, resume=a.resume, seed=a.seed, device=a.device,
        activation_checkpointing=a.activation_checkpointing, lora_rank=a.lora_rank, init_from=a.init_from,
        progress=not a.no_progress, num_threads=a.threads,
    )
    callbacks = [JsonlLogger(Path(a.out) / "metrics.jsonl")] if a.out else []
    trainer = Trainer(get_config(a.config), cfg, callbacks)
    try:
        history = trainer.run()
        if trainer.dist.is_main and history:
            first, last = history[0], history[-1]
            print(f"done: {trainer.step} steps, loss {first['loss']:.4f} -> {last['loss']:.4f}, "
                  f"{sum(h['tokens_per_s'] for h in history) / len(history):.0f} tokens/s")
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
