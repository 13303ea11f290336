"""Attention adapter for `torch.nn.MultiheadAttention` (also inside `nn.Transformer*Layer`).

A forward hook (with kwargs) recomputes the queries and keys of one batch element (row 0, or
the row an inference watch names: `AttentionSink.batch_row`) from the module's inputs and its
input projection, so the module runs its own fast or slow path as
before. Masks follow `F.multi_head_attention_forward`: a bool `attn_mask` / `key_padding_mask`
is True where attention is NOT allowed, a float one is added to the scores; `bias_k` and
`add_zero_attn` append key columns; `is_causal` without a key padding mask and without
`need_weights` makes torch use plain causal attention in place of `attn_mask`.

Note: torch's `TransformerEncoderLayer` skips its fused inference fast path when any of its
submodules has a forward hook, so in eval mode under `no_grad` a hooked layer runs the (equal)
unfused path.

Nested tensors: in eval mode under `no_grad`, `TransformerEncoder` given a `src_key_padding_mask`
packs the batch into a nested tensor holding each sequence's unpadded tokens only, and calls its
layers without the mask. The queries and keys of sequence 0 are then its own tokens
(`unbind()[0]`), every key visible: the map recorded is [heads, real tokens, real tokens]. The
padded positions are never computed there, so there is nothing of them to record; that is said
once, in one log line (`NESTED_NOTE`).
"""
from __future__ import annotations

import logging
import weakref
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inspector.probes.attention.stats import Visibility
from inspector.probes.attention.sink import AttentionSink

log = logging.getLogger("inspector")

NESTED_NOTE = ("inspector: attention of nn.MultiheadAttention on nested tensors (TransformerEncoder's padded "
               "inference path): maps cover sequence 0's unpadded tokens; padded positions are not computed "
               "by torch and are not recorded")
"""The one line logged the first time a probe captures a nested-tensor input."""
_noted: "weakref.WeakSet[Any]" = weakref.WeakSet()  # the sinks (probes) that said it

_PARAMS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
           "average_attn_weights", "is_causal")


def attach_mha(model: nn.Module, sink: AttentionSink) -> list[Any]:
    """Hook every `nn.MultiheadAttention` of `model`; returns the hook handles."""
    return [m.register_forward_hook(partial(_hook, sink), with_kwargs=True)
            for m in model.modules() if isinstance(m, nn.MultiheadAttention)]


def mha_qk(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None,
           key_padding_mask: torch.Tensor | None, is_causal: bool = False,
           need_weights: bool = True, row: int = 0) -> tuple[torch.Tensor, torch.Tensor, float, Visibility]:
    """(q [H, T, hd], k [H, S, hd], scale, visibility) of batch element `row`, as the module computes them."""
    batched = query.dim() == 3
    if batched:
        q_TE = query[row] if mha.batch_first else query[:, row]
        k_SE = key[row] if mha.batch_first else key[:, row]
    else:
        q_TE, k_SE = query, key
    E, H = mha.embed_dim, mha.num_heads
    hd = E // H
    if mha._qkv_same_embed_dim:
        w_q, w_k = mha.in_proj_weight[:E], mha.in_proj_weight[E:2 * E]
    else:
        w_q, w_k = mha.q_proj_weight, mha.k_proj_weight
    bias = mha.in_proj_bias
    q_TE = F.linear(q_TE, w_q, None if bias is None else bias[:E])
    k_SE = F.linear(k_SE, w_k, None if bias is None else bias[E:2 * E])
    extra = 0
    if mha.bias_k is not None:
        k_SE = torch.cat([k_SE, mha.bias_k.reshape(1, E).to(k_SE.dtype)])
        extra += 1
    q_HTD = q_TE.reshape(-1, H, hd).transpose(0, 1)
    k_HSD = k_SE.reshape(-1, H, hd).transpose(0, 1)
    if mha.add_zero_attn:
        k_HSD = torch.cat([k_HSD, k_HSD.new_zeros(H, 1, hd)], dim=1)
        extra += 1
    scale = hd ** -0.5
    if is_causal and key_padding_mask is None and not need_weights:
        return q_HTD, k_HSD, scale, Visibility(causal=True)
    return q_HTD, k_HSD, scale, _visibility(attn_mask, key_padding_mask, H, batched, extra, row)


def _visibility(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, H: int,
                batched: bool, extra: int, row: int = 0) -> Visibility:
    """Batch element `row`'s masks in `Visibility` terms (a 3-d `attn_mask` is [batch × heads, T, S]);
    `extra` key columns appended are visible."""
    vis = Visibility()
    if attn_mask is not None:
        m_HTS = attn_mask.unsqueeze(0) if attn_mask.dim() == 2 else attn_mask[row * H:(row + 1) * H]
        if m_HTS.dtype == torch.bool:
            vis.allowed_HTS = _pad(~m_HTS, extra, True)
        else:
            vis.bias_HTS = _pad(m_HTS, extra, 0.0)
    if key_padding_mask is not None:
        kpm_S = key_padding_mask[row] if batched and key_padding_mask.dim() == 2 else key_padding_mask
        if kpm_S.dtype == torch.bool:
            vis.key_mask_S = _pad(~kpm_S, extra, True)
        else:
            kpm_11S = _pad(kpm_S, extra, 0.0).view(1, 1, -1)
            vis.bias_HTS = kpm_11S if vis.bias_HTS is None else vis.bias_HTS + kpm_11S
    return vis


def _pad(t: torch.Tensor, extra: int, value: bool | float) -> torch.Tensor:
    """`t` with `extra` columns of `value` appended on the last dimension."""
    if not extra:
        return t
    return torch.cat([t, t.new_full((*t.shape[:-1], extra), value)], dim=-1)


def _hook(sink: AttentionSink, module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> None:
    if torch.compiler.is_compiling():
        sink.traced()
        return
    if sink.idle():
        return
    name = "MultiheadAttention"
    try:
        name, layer = sink.layer_of(module)
        if not sink.wants(name, layer):
            return
        bound = dict(zip(_PARAMS, args))
        bound.update(kwargs)
        query, key = bound["query"], bound["key"]
        if query.is_nested or key.is_nested:
            _capture_nested(sink, module, name, layer, query, key, bound)
            return
        batch = (query.shape[0] if module.batch_first else query.shape[1]) if query.dim() == 3 else 1
        with torch.no_grad():
            q_HTD, k_HSD, scale, vis = mha_qk(
                module, query, key, bound.get("attn_mask"), bound.get("key_padding_mask"),
                bool(bound.get("is_causal", False)), bool(bound.get("need_weights", True)), sink.batch_row(batch))
        sink.capture(name, layer, q_HTD, k_HSD, scale, vis)
    except Exception as exc:  # a recording problem must never stop the model
        sink.failed(name, exc)


def _first_sequence(t: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """Sequence 0 of a batch: a nested tensor's first component, else row 0 along the batch dim."""
    if t.is_nested:
        return t.unbind()[0]
    if t.dim() < 3:
        return t
    return t[0] if batch_first else t[:, 0]


def _capture_nested(sink: AttentionSink, module: nn.MultiheadAttention, name: str, layer: int,
                    query: torch.Tensor, key: torch.Tensor, bound: dict) -> None:
    """Capture sequence 0 of a nested-tensor call: its own tokens, masks as given (none from
    `TransformerEncoder`, whose nested path passes no mask)."""
    q_TE = _first_sequence(query, module.batch_first)
    k_SE = _first_sequence(key, module.batch_first)
    if q_TE.shape[0] == 0 or k_SE.shape[0] == 0:
        return
    with torch.no_grad():
        q_HTD, k_HSD, scale, vis = mha_qk(
            module, q_TE, k_SE, bound.get("attn_mask"), None,
            bool(bound.get("is_causal", False)), bool(bound.get("need_weights", True)))
    sink.capture(name, layer, q_HTD, k_HSD, scale, vis)
    if sink not in _noted:
        _noted.add(sink)
        log.warning(NESTED_NOTE)
