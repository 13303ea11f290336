"""The attention probe and its adapters: `probe` (maps, per-head entropy / max weight, collapse),
`stats` (pure tensor functions: visibility, recomputed probabilities, per-head reductions),
`collapse` (the collapse detector), `sink` (what an adapter hands its queries and keys to), and one
adapter per model family: `qk` (our engine's QKCapture tap), `hf` (Hugging Face AttentionInterface),
`mha` (`torch.nn.MultiheadAttention`). Importing the package registers the probe."""
from __future__ import annotations

from inspector.probes.attention.probe import AttentionProbe

__all__ = ["AttentionProbe"]
