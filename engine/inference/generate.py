"""Autoregressive generation for equal-length prompt batches, with or without the MLA KV cache."""

from __future__ import annotations

import torch

from inspector_engine.inference.sampling import SamplingParams, sample
from inspector_engine.model.cache import KVCache


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A seeded generator when ``params.seed`` is set (reproducible sampling), else None."""
    if params.seed is None or params.greedy:
        return None
    return torch.Generator(device=device).manual_seed(params.seed)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt_BT: torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams | None = None,
    use_cache: bool = True,
    cache_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Continue every row of ``prompt[B, T]``; returns ``[B, T + max_new_tokens]``.

    With ``use_cache`` the prompt is prefilled once into a `KVCache` and each new token costs one
    single-token forward. Without it every step re-runs the full sequence (the baseline), cropped
    to the last ``max_seq_len`` tokens.
    """
    params = params or SamplingParams()
    model.eval()
    device = next(model.parameters()).device
    prompt_BT = prompt_BT.to(device)
    gen = make_generator(params, device)
    B, T = prompt_BT.shape
    new_tokens: list[torch.Tensor] = []
    if use_cache:
        cache = KVCache.for_model(model, B, capacity=T + max_new_tokens, dtype=cache_dtype)
        logits_BV = model(prompt_BT, cache)[:, -1]
        for i in range(max_new_tokens):
            tok_B = sample(logits_BV, params, gen)
            new_tokens.append(tok_B)
            if i + 1 < max_new_tokens:
                logits_BV = model(tok_B.unsqueeze(1), cache)[:, -1]
    else:
        seq_BT = prompt_BT
        limit = model.cfg.max_seq_len
        for _ in range(max_new_tokens):
            logits_BV = model(seq_BT[:, -limit:])[:, -1]
            tok_B = sample(logits_BV, params, gen)
            new_tokens.append(tok_B)
            seq_BT = torch.cat([seq_BT, tok_B.unsqueeze(1)], dim=1)
    if not new_tokens:
        return prompt_BT
    return torch.cat([prompt_BT, torch.stack(new_tokens, dim=1)], dim=1)
