"""Checking a blob index row before reading or allocating anything it names."""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np

from inspector.store.format import MAX_PAYLOAD

CODECS = ("none", "lz4", "zstd")
MAX_BLOB_BYTES = MAX_PAYLOAD
"""Largest tensor a blob may decode to (1 GiB)."""
MAX_NDIM = 8
_DTYPE_KINDS = "biuf"                      # bool, signed, unsigned, float
_LZ4_MAX_RATIO = 256                       # LZ4 cannot compress better than ~255:1


class BadBlobRowError(ValueError):
    """An index row names a tensor that cannot be right (the message says why)."""


@dataclass(frozen=True)
class BlobLayout:
    """What a checked row says: where the stored bytes are and what they decode to."""

    blob_file: int
    offset: int
    length: int
    crc32: int
    codec: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size of the decoded tensor."""
        return prod(self.shape) * self.dtype.itemsize


def check_blob_row(row: dict[str, Any]) -> BlobLayout:
    """The layout a blob index row describes, or BadBlobRowError when any field is impossible."""
    codec, dtype_text, shape = row.get("codec"), row.get("dtype"), row.get("shape")
    if codec not in CODECS:
        raise BadBlobRowError(f"unknown codec {str(codec)[:20]!r}")
    if not isinstance(dtype_text, str) or len(dtype_text) > 8:
        raise BadBlobRowError("unreadable dtype")
    try:
        dtype = np.dtype(dtype_text)
    except (TypeError, ValueError):
        raise BadBlobRowError(f"unknown dtype {dtype_text!r}") from None
    if dtype.kind not in _DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise BadBlobRowError(f"dtype {dtype_text!r} is not a plain number type")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadBlobRowError("impossible shape")
    fields = [row.get(k) for k in ("blob_file", "offset", "length", "crc32")]
    if not all(isinstance(v, int) and v >= 0 for v in fields):
        raise BadBlobRowError("impossible position")
    layout = BlobLayout(fields[0], fields[1], fields[2], fields[3], codec, dtype, tuple(shape))
    if any(d > MAX_BLOB_BYTES for d in shape) or layout.nbytes > MAX_BLOB_BYTES:
        raise BadBlobRowError(f"a tensor of shape {list(shape)} is larger than a blob may be")
    if codec == "none" and layout.length != layout.nbytes:
        raise BadBlobRowError(f"{layout.length} stored bytes for a {layout.nbytes}-byte tensor")
    if codec == "lz4" and layout.nbytes > layout.length * _LZ4_MAX_RATIO + 64:
        raise BadBlobRowError(f"{layout.length} lz4 bytes cannot hold a {layout.nbytes}-byte tensor")
    if layout.length > MAX_BLOB_BYTES:
        raise BadBlobRowError("larger than a blob may be")
    return layout
