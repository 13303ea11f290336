"""Byte-level tokenizer: token ids are the UTF-8 bytes of the text (vocabulary of 256)."""

from __future__ import annotations

import torch


class ByteTokenizer:
    """Lossless, merge-free, special-free: ``encode`` is ``text.encode("utf-8")``.

    Decoding an arbitrary id sequence may split a multi-byte character; such bytes are shown as
    U+FFFD (``errors="replace"``).
    """

    vocab_size: int = 256

    def encode(self, text: str) -> list[int]:
        """Text to byte ids."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Byte ids to text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def encode_tensor(self, text: str) -> torch.Tensor:
        """Text to a 1-D ``torch.long`` tensor of byte ids."""
        return torch.tensor(self.encode(text), dtype=torch.long)
