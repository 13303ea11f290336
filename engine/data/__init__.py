"""The bundled public-domain training corpus (see README.md in this folder)."""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS_FILE = Path(__file__).with_name("shakespeare.txt")


def corpus_path() -> Path:
    """Path of the bundled corpus (seven Shakespeare plays, ASCII, ~0.94 MB)."""
    return CORPUS_FILE


def load_bytes(path: str | Path | None = None) -> torch.Tensor:
    """A text file (default: the bundled corpus) as a 1-D ``uint8`` tensor of its bytes."""
    raw = Path(path or CORPUS_FILE).read_bytes()
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)
