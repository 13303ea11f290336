"""DeepSeek Inspector's built-in subject: a small, faithful DeepSeek-V2/V3-style engine.

Model (MLA + DeepSeekMoE), byte-level training with DDP and exact resume, KV-cached generation
with dynamic batching, and LoRA. Depends only on torch, numpy, tqdm and the standard library.
"""

from inspector_engine.config import ModelConfig, get_config, list_configs, register_config
# `generate` (the function) lives in inspector_engine.inference: `inspector_engine.generate` is the CLI module.
from inspector_engine.inference import BatchScheduler, Request, SamplingParams
from inspector_engine.model import KVCache, QKCapture, Router, Transformer
from inspector_engine.tokenizer import ByteTokenizer
from inspector_engine.training import Callback, TrainConfig, Trainer, load_model

__all__ = [
    "BatchScheduler", "ByteTokenizer", "Callback", "KVCache", "ModelConfig", "QKCapture", "Request", "Router",
    "SamplingParams", "TrainConfig", "Trainer", "Transformer", "get_config", "list_configs",
    "load_model", "register_config",
]
