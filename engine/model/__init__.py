"""DeepSeek-V2/V3-style model: one concern per module (norm, rope, attention, router, moe, ...)."""

from engine.model.attention import MLA, attention_mask
from engine.model.cache import KVCache
from engine.model.hooks import QKCapture
from engine.model.lora import LoRALinear, apply_lora, lora_state_dict, merge_lora, unmerge_lora
from engine.model.mlp import MLP
from engine.model.moe import MoE
from engine.model.norm import RMSNorm
from engine.model.rope import RotaryEmbedding, apply_rope
from engine.model.router import Router
from engine.model.transformer import Block, Transformer

__all__ = [
    "MLA", "attention_mask", "KVCache", "QKCapture", "LoRALinear", "apply_lora", "lora_state_dict",
    "merge_lora", "unmerge_lora", "MLP", "MoE", "RMSNorm", "RotaryEmbedding", "apply_rope", "Router",
    "Block", "Transformer",
]
