"""MLA latent KV cache: per token and layer only the normed latent and the shared rope key.

Cached bytes per token are ``(kv_lora_rank + qk_rope_head_dim) * n_layers * dtype_size``; nothing
is stored per head. Sequences in a batch are right-aligned: columns ``[0, length)`` are filled and
row ``b``'s real tokens occupy ``[pad[b], length)``, so new queries are always the last columns.
Left padding only appears when the batching scheduler merges sequences of different lengths.
"""

from __future__ import annotations

import torch


class KVCache:
    """Growable latent cache for ``n_layers`` MLA layers and a batch of right-aligned sequences."""

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        kv_lora_rank: int,
        rope_dim: int,
        capacity: int = 64,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.n_layers, self.kv_lora_rank, self.rope_dim = n_layers, kv_lora_rank, rope_dim
        self.dtype, self.device = dtype, torch.device(device)
        capacity = max(int(capacity), 1)
        self.latent: list[torch.Tensor] = [self._empty(batch_size, capacity, kv_lora_rank) for _ in range(n_layers)]
        self.k_rope: list[torch.Tensor] = [self._empty(batch_size, capacity, rope_dim) for _ in range(n_layers)]
        self._set_pads([0] * batch_size)
        self.length = 0
        self.decompressed_width = 0
        """Per layer and token, the values a decompressed (per-head k and v) cache would hold;
        set by `for_model` (``n_heads * (qk_head_dim + v_head_dim)``), 0 when unknown."""

    @classmethod
    def for_model(
        cls, model: torch.nn.Module, batch_size: int, capacity: int = 64, dtype: torch.dtype | None = None
    ) -> "KVCache":
        """A cache shaped for ``model`` (a `Transformer`), on its device and (default) dtype."""
        cfg = model.cfg
        p = next(model.parameters())
        cache = cls(cfg.n_layers, batch_size, cfg.kv_lora_rank, cfg.qk_rope_head_dim, capacity,
                    dtype or p.dtype, p.device)
        cache.decompressed_width = cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
        return cache

    def _set_pads(self, pads: list[int]) -> None:
        """Leading padding columns per row: `pads` on the host (sizes and masks never wait for the
        device) and `pad_B` on the device, made from it only when the batch changes."""
        self.pads = pads
        self.pad_B = torch.tensor(pads, dtype=torch.long, device=self.device)

    def _empty(self, b: int, s: int, c: int) -> torch.Tensor:
        return torch.zeros(b, s, c, dtype=self.dtype, device=self.device)

    @property
    def batch_size(self) -> int:
        """Number of sequences (rows)."""
        return int(self.pad_B.shape[0])

    @property
    def capacity(self) -> int:
        """Allocated columns."""
        return int(self.latent[0].shape[1]) if self.n_layers else 0

    def positions(self, T: int) -> torch.Tensor:
        """Token positions ``[B, T]`` of the next ``T`` tokens of every row."""
        cols = torch.arange(self.length, self.length + T, device=self.device)
        return cols.unsqueeze(0) - self.pad_B.unsqueeze(1)

    def key_mask(self, T: int) -> torch.Tensor | None:
        """Real-key mask ``[B, length + T]`` once ``T`` more tokens are written; None if no padding."""
        if self.batch_size == 0 or max(self.pads) == 0:
            return None
        cols = torch.arange(self.length + T, device=self.device)
        return cols.unsqueeze(0) >= self.pad_B.unsqueeze(1)

    def update(self, layer: int, latent_BTC: torch.Tensor, k_rope_BTR: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``T`` new tokens of ``layer`` at columns ``[length, length+T)``; return all ``S``."""
        T = latent_BTC.shape[1]
        end = self.length + T
        if end > self.capacity:
            self._grow(max(end, 2 * self.capacity))
        self.latent[layer][:, self.length:end] = latent_BTC.to(self.dtype)
        self.k_rope[layer][:, self.length:end] = k_rope_BTR.to(self.dtype)
        return self.latent[layer][:, :end], self.k_rope[layer][:, :end]

    def advance(self, T: int) -> None:
        """Commit ``T`` tokens written by `update` in every layer."""
        self.length += T

    def _grow(self, capacity: int) -> None:
        for store in (self.latent, self.k_rope):
            for i, t in enumerate(store):
                new = self._empty(t.shape[0], capacity, t.shape[2])
                new[:, : self.length] = t[:, : self.length]
                store[i] = new

    def bytes_per_token(self) -> int:
        """``(kv_lora_rank + qk_rope_head_dim) * n_layers * dtype_size``."""
        return (self.kv_lora_rank + self.rope_dim) * self.n_layers * self.dtype.itemsize

    def decompressed_bytes_per_token(self) -> int:
        """What a cache of per-head keys and values would take per token:
        ``n_heads * (qk_head_dim + v_head_dim) * n_layers * dtype_size`` (0 when unknown)."""
        return self.decompressed_width * self.n_layers * self.dtype.itemsize

    def token_count(self) -> int:
        """Real (non-padding) tokens held, summed over the rows."""
        return self.length * self.batch_size - sum(self.pads)

    def allocated_bytes(self) -> int:
        """Bytes held by every tensor of the cache (all allocated columns): every layer's latent and
        rope-key tensors share the batch and capacity (grow, select, trim and extend keep it so), so
        this is arithmetic, not a walk over the tensors (read once per decode iteration when watched)."""
        return self.batch_size * self.capacity * self.bytes_per_token()

    # --- batch surgery used by the dynamic batching scheduler -----------------------------------

    def select(self, rows: list[int] | torch.Tensor) -> None:
        """Keep only ``rows`` (in that order), then drop leading all-padding columns."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        for store in (self.latent, self.k_rope):
            for i, t in enumerate(store):
                store[i] = t.index_select(0, idx)
        order = rows.tolist() if isinstance(rows, torch.Tensor) else list(rows)
        self._set_pads([self.pads[int(i)] for i in order])
        self.trim()

    def trim(self) -> None:
        """Remove leading columns that are padding in every row."""
        drop = self.length if self.batch_size == 0 else min(self.pads)
        if drop == 0:
            return
        capacity = max(self.capacity - drop, 1)
        for store in (self.latent, self.k_rope):
            for i, t in enumerate(store):
                new = self._empty(t.shape[0], capacity, t.shape[2])
                new[:, : self.length - drop] = t[:, drop : self.length]
                store[i] = new
        self._set_pads([p - drop for p in self.pads])
        self.length -= drop

    def extend(self, other: "KVCache") -> None:
        """Append ``other``'s rows, right-aligning both batches to the longer length."""
        length = max(self.length, other.length)
        capacity = max(self.capacity, other.capacity, length)
        shift_self, shift_other = length - self.length, length - other.length
        for store, other_store in ((self.latent, other.latent), (self.k_rope, other.k_rope)):
            for i, (a, b) in enumerate(zip(store, other_store)):
                new = self._empty(a.shape[0] + b.shape[0], capacity, a.shape[2])
                new[: a.shape[0], shift_self:length] = a[:, : self.length]
                new[a.shape[0] :, shift_other:length] = b[:, : other.length].to(self.dtype)
                store[i] = new
        self._set_pads([p + shift_self for p in self.pads] + [p + shift_other for p in other.pads])
        self.length = length
