"""Training hyper-parameters (`TrainConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class TrainConfig:
    """Everything the `Trainer` needs besides the model config.

    ``batch_size`` is sequences per micro-batch per process; the global batch per optimizer step
    is ``batch_size * grad_accum * world_size`` sequences of ``seq_len`` tokens. ``num_threads``
    sets torch's intra-op CPU threads for the whole process (None keeps torch's default; 1 is far
    more robust when other processes compete for a small CPU).
    """

    steps: int = 300
    batch_size: int = 16
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 8
    ckpt_every: int = 0
    out_dir: str | None = None
    resume: str | None = None
    seed: int = 1337
    device: str = "auto"
    activation_checkpointing: bool = False
    val_fraction: float = 0.1
    data_path: str | None = None
    bias_update_gamma: float | None = None
    lora_rank: int = 0
    lora_alpha: float = 32.0
    init_from: str | None = None
    progress: bool = True
    num_threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for checkpoints."""
        return dataclasses.asdict(self)
