"""KV-cache sizes, read by duck typing from whatever cache a forward was given.

Two shapes of cache are known, never imported:
- a latent cache like our engine's `KVCache` (`token_count()`, `bytes_per_token()`,
  `allocated_bytes()`, optional `decompressed_bytes_per_token()`, `length`): bytes are the real
  tokens times the bytes per token as stored (MLA: `(kv_lora_rank + qk_rope_head_dim) * layers *
  dtype size`), and the decompressed figure is what per-head keys and values would take;
- a Hugging Face `Cache` (`get_seq_length()`, `layers[i].keys/values`): it stores per-head keys and
  values, so bytes = allocated = decompressed = the tensors' bytes, tokens = batch × sequence slots.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "kv_cache")
"""Keyword arguments a forward may pass its cache in."""


@dataclass(frozen=True)
class CacheStats:
    """One cache's size: real tokens, bytes as stored, bytes allocated, bytes if decompressed."""

    tokens: int
    bytes: int
    allocated_bytes: int
    decompressed_bytes: int


_KIND_OF_TYPE: dict[type, str | None] = {}


def _cache_kind(obj: Any) -> str | None:
    """"latent", "hf" or None, by the object's methods (decided once per type)."""
    kind = _KIND_OF_TYPE.get(type(obj), "?")
    if kind == "?":
        if all(hasattr(obj, a) for a in ("token_count", "bytes_per_token", "allocated_bytes", "length")):
            kind = "latent"
        elif hasattr(obj, "get_seq_length") and hasattr(obj, "layers"):
            kind = "hf"
        else:
            kind = None
        if len(_KIND_OF_TYPE) < 1024:
            _KIND_OF_TYPE[type(obj)] = kind
    return kind


def is_latent_cache(obj: Any) -> bool:
    """A cache like the engine's `KVCache` (by its methods, never by import)."""
    return _cache_kind(obj) == "latent"


def is_hf_cache(obj: Any) -> bool:
    """A Hugging Face `Cache` (by its methods)."""
    return _cache_kind(obj) == "hf"


def find_cache(args: Iterable[Any], kwargs: dict[str, Any]) -> Any | None:
    """The cache among a forward's arguments, or None."""
    for key in CACHE_KWARGS:
        value = kwargs.get(key)
        if value is not None and _cache_kind(value) is not None:
            return value
    for value in args:
        if not isinstance(value, torch.Tensor) and _cache_kind(value) is not None:
            return value
    return None


def cached_length(cache: Any) -> int:
    """Tokens per sequence already in the cache before a forward (0: this forward is a prefill)."""
    if is_latent_cache(cache):
        return int(cache.length)
    return int(cache.get_seq_length())


def cache_stats(cache: Any) -> CacheStats | None:
    """The cache's sizes now (None for an unknown kind of cache)."""
    if is_latent_cache(cache):
        tokens = int(cache.token_count())
        per_token = int(cache.bytes_per_token())
        decompressed = getattr(cache, "decompressed_bytes_per_token", None)
        return CacheStats(tokens, tokens * per_token, int(cache.allocated_bytes()),
                          tokens * int(decompressed()) if callable(decompressed) else tokens * per_token)
    if is_hf_cache(cache):
        total, slots = 0, 0
        for layer in getattr(cache, "layers", ()):
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        first = next((getattr(layer, "keys", None) for layer in cache.layers
                      if isinstance(getattr(layer, "keys", None), torch.Tensor)), None)
        if first is not None and first.dim() >= 3:
            slots = int(first.shape[0]) * int(cache.get_seq_length())
        return CacheStats(slots, total, total, total)
    return None
