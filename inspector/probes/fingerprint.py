"""A position-sensitive 64-bit fingerprint of a batch, computed on the tensors' device.

The bytes of each tensor are read as int32 words (a view, no copy, when the byte count allows; an
int64 token id is two words) and summed with position weights: a fixed table of `WIDTH` odd weights
along each row of `WIDTH` words, and one weight per row, all in wrapping integer arithmetic, so a
batch with one token changed, two tokens swapped, another shape or another dtype gets another
fingerprint. Not cryptographic: it tells whether a replayed step trains on the same batch.
Transient memory: the words times their weights, the size of the batch; one scalar per tensor.
"""
from __future__ import annotations

import zlib
from typing import Any

import torch

WIDTH = 65_536
_WEIGHTS: dict[torch.device, torch.Tensor] = {}
_MIX = 0x9E3779B97F4A7C15 - (1 << 64)     # 64-bit golden-ratio constant, as a signed int64


def _weights(device: torch.device) -> torch.Tensor:
    w = _WEIGHTS.get(device)
    if w is None:
        idx = torch.arange(WIDTH, dtype=torch.int64)
        w = _WEIGHTS[device] = (((idx * 2_654_435_761) % (1 << 31)) | 1).to(torch.int32).to(device)
    return w


def _words(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat int32 vector."""
    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    if (flat.numel() * flat.element_size()) % 4 == 0 and flat.numel():
        try:
            return flat.view(torch.int32)
        except RuntimeError:
            pass
    return flat.view(torch.uint8).to(torch.int32) if flat.element_size() > 1 else flat.to(torch.int32)


def tensor_fingerprint(t: torch.Tensor) -> torch.Tensor:
    """An int64 scalar on `t`'s device: its words weighted by position, its shape and dtype mixed in."""
    words = _words(t)
    w = _weights(words.device)
    n = words.numel()
    rows, rest = divmod(n, WIDTH)
    total = torch.zeros((), dtype=torch.int64, device=words.device)
    if rows:
        row_R = (words[:rows * WIDTH].view(rows, WIDTH) * w).sum(dim=1, dtype=torch.int64)
        row_w = torch.arange(1, rows + 1, dtype=torch.int64, device=words.device) * _MIX
        total = total + (row_R * row_w).sum()
    if rest:
        total = total + (words[rows * WIDTH:] * w[:rest]).sum(dtype=torch.int64) * (rows + 1)
    shape_mix = zlib.crc32(f"{tuple(t.shape)} {t.dtype}".encode())
    return total + shape_mix


def batch_fingerprint(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One int64 scalar for several tensors, in order (on the first tensor's device)."""
    out = None
    for i, t in enumerate(tensors):
        fp = tensor_fingerprint(t).to(tensors[0].device) * (2 * i + 1)
        out = fp if out is None else out * 31 + fp
    return out if out is not None else torch.zeros((), dtype=torch.int64)


def fingerprint(*tensors: Any) -> int:
    """The fingerprint the recorder keeps for a forward called with these tensors (the positional and
    keyword tensor arguments, in call order): compare it with a run's `batch` rows to check that a
    replayed step trains on the same batch."""
    ts = [t for t in tensors if isinstance(t, torch.Tensor)]
    return int(batch_fingerprint(ts).item())
