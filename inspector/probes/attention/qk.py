"""Attention adapter for models that expose a `QKCapture` tap (our engine): a forward hook on
every module of that class name reads the post-rope queries and keys it passes through.

The tap is duck-typed (class name `QKCapture` plus `softmax_scale`, `causal`, `window` and an
optional `key_mask` [batch, S]); its queries are the last T of the S key positions.

MLA's weight-absorbed decode path has a tap of its own, `LatentQKCapture` (same attributes), that
passes `(q_lat [B, T, H, C], q_rope [B, T, H, R], latent [B, S, C], k_rope [B, S, R])`: the scores
are `[q_lat, q_rope] · [latent, k_rope]ᵀ * scale`, so the probe treats `[latent, k_rope]` as one key
head shared by every query head and records the same attention as the decompressed path would.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from inspector.probes.attention.stats import Visibility
from inspector.probes.attention.sink import AttentionSink


TAP_CLASSES = ("QKCapture", "LatentQKCapture")


def is_qk_capture(module: nn.Module) -> bool:
    """True for a QKCapture or LatentQKCapture tap (by class name and attributes, never by import)."""
    return type(module).__name__ in TAP_CLASSES and hasattr(module, "softmax_scale")


def qk_hooks(model: nn.Module, sink: AttentionSink) -> list[tuple[nn.Module, Callable[..., Any]]]:
    """(tap, forward hook) for every QKCapture / LatentQKCapture tap of `model`."""
    return [(m, partial(_latent_hook if type(m).__name__ == "LatentQKCapture" else _hook, sink))
            for m in model.modules() if is_qk_capture(m)]


def qk_visibility(tap: nn.Module, T: int, S: int, row: int = 0) -> Visibility:
    """The visibility rules the tap documents, for batch row `row`."""
    key_mask = getattr(tap, "key_mask", None)
    return Visibility(causal=bool(getattr(tap, "causal", True)), q_offset=S - T,
                      window=getattr(tap, "window", None),
                      key_mask_S=None if key_mask is None else key_mask[row if key_mask.shape[0] > row else 0])


def _hook(sink: AttentionSink, module: nn.Module, args: tuple, output: Any) -> None:
    if torch.compiler.is_compiling():
        sink.traced()
        return
    if sink.idle():
        return
    name = "QKCapture"
    try:
        name, layer = sink.layer_of(module)
        if not sink.wants(name, layer):
            return
        pair = output if isinstance(output, tuple) and len(output) == 2 else args
        q_BHTD, k_BHSD = pair[0], pair[1]
        if not (isinstance(q_BHTD, torch.Tensor) and isinstance(k_BHSD, torch.Tensor)):
            return
        row = sink.batch_row(q_BHTD.shape[0])
        vis = qk_visibility(module, q_BHTD.shape[2], k_BHSD.shape[2], row)
        sink.capture(name, layer, q_BHTD[row], k_BHSD[row], float(module.softmax_scale), vis)
    except Exception as exc:  # a recording problem must never stop the model
        sink.failed(name, exc)


def _latent_hook(sink: AttentionSink, module: nn.Module, args: tuple, output: Any) -> None:
    """The absorbed path: one query head per head over the shared `[latent, k_rope]` key."""
    if torch.compiler.is_compiling():
        sink.traced()
        return
    if sink.idle():
        return
    name = "LatentQKCapture"
    try:
        name, layer = sink.layer_of(module)
        # recorded under the decompressed tap's name: one attention module per layer, whichever path ran
        name = name.replace("latent_qk_capture", "qk_capture")
        if not sink.wants(name, layer):
            return
        parts = output if isinstance(output, tuple) and len(output) == 4 else args
        q_lat_BTHC, q_rope_BTHR, latent_BSC, k_rope_BSR = parts[:4]
        row = sink.batch_row(q_lat_BTHC.shape[0])
        q_HTD = torch.cat([q_lat_BTHC[row], q_rope_BTHR[row].to(q_lat_BTHC.dtype)], dim=-1).transpose(0, 1)
        k_1SD = torch.cat([latent_BSC[row], k_rope_BSR[row].to(latent_BSC.dtype)], dim=-1).unsqueeze(0)
        vis = qk_visibility(module, q_HTD.shape[1], k_1SD.shape[1], row)
        sink.capture(name, layer, q_HTD, k_1SD, float(module.softmax_scale), vis, owned=True)   # cat made them
    except Exception as exc:  # a recording problem must never stop the model
        sink.failed(name, exc)

