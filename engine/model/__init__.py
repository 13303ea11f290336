"""DeepSeek-V2/V3-style model: one concern per module (norm, rope, attention, router, moe, ...)."""

from inspector_engine.model.attention import MLA, attention_mask
from inspector_engine.model.cache import KVCache
from inspector_engine.model.hooks import LatentQKCapture, QKCapture
from inspector_engine.model.lora import LoRALinear, apply_lora, lora_state_dict, merge_lora, unmerge_lora
from inspector_engine.model.mlp import MLP
from inspector_engine.model.moe import MoE
from inspector_engine.model.norm import RMSNorm
from inspector_engine.model.rope import RotaryEmbedding, apply_rope
from inspector_engine.model.router import Router
from inspector_engine.model.transformer import Block, Transformer

__all__ = [
    "MLA", "attention_mask", "KVCache", "LatentQKCapture", "QKCapture", "LoRALinear", "apply_lora", "lora_state_dict",
    "merge_lora", "unmerge_lora", "MLP", "MoE", "RMSNorm", "RotaryEmbedding", "apply_rope", "Router",
    "Block", "Transformer",
]
