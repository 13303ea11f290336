"""Byte-token data pipeline: deterministic split, shuffled training windows, fixed eval windows."""

from __future__ import annotations

import torch


def split_tokens(tokens: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``1 - val_fraction`` of the stream for training, the rest for validation."""
    if not 0 < val_fraction < 1:
        raise ValueError("val_fraction must lie in (0, 1)")
    cut = int(len(tokens) * (1 - val_fraction))
    return tokens[:cut], tokens[cut:]


def windows(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets ``[n, seq_len]`` (int64) for windows beginning at ``starts``."""
    idx = starts.unsqueeze(1) + torch.arange(seq_len + 1)
    chunk = tokens[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


def eval_starts(n_tokens: int, seq_len: int, count: int) -> torch.Tensor:
    """``count`` window starts spread evenly over a stream of ``n_tokens`` tokens."""
    last = n_tokens - seq_len - 1
    if last < 0:
        raise ValueError(f"validation split ({n_tokens} tokens) is shorter than seq_len + 1")
    return torch.linspace(0, last, count).round().long()


class TokenStream:
    """Epochs over non-overlapping ``seq_len + 1`` windows in a seeded random order.

    Each epoch draws a random start offset in ``[0, seq_len)`` and a permutation of the windows
    from ``seed`` and the epoch number only, so the stream is a pure function of
    ``(seed, epoch, cursor)`` — which is exactly what `state_dict` stores.
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, seed: int) -> None:
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.n_windows = (len(tokens) - seq_len) // seq_len
        if self.n_windows < 1:
            raise ValueError(f"training split ({len(tokens)} tokens) is too short for seq_len={seq_len}")
        self.epoch, self.cursor = 0, 0
        self._order_epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _epoch_starts(self) -> torch.Tensor:
        if self._order_epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            offset = int(torch.randint(self.seq_len, (1,), generator=g))
            perm = torch.randperm(self.n_windows, generator=g)
            self._order, self._order_epoch = offset + perm * self.seq_len, self.epoch
        return self._order

    def take(self, n: int) -> torch.Tensor:
        """The next ``n`` window starts, crossing into new epochs as needed."""
        out: list[torch.Tensor] = []
        while n > 0:
            order = self._epoch_starts()
            k = min(n, self.n_windows - self.cursor)
            out.append(order[self.cursor:self.cursor + k])
            self.cursor += k
            n -= k
            if self.cursor == self.n_windows:
                self.epoch, self.cursor = self.epoch + 1, 0
        return torch.cat(out)

    def batch(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets for the given window starts."""
        return windows(self.tokens, starts, self.seq_len)

    def state_dict(self) -> dict[str, int]:
        """Position in the stream (plain ints)."""
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a position saved by `state_dict` (same seed and seq_len required)."""
        if state["seed"] != self.seed or state["seq_len"] != self.seq_len:
            raise ValueError("data stream state was saved with a different seed or seq_len")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
