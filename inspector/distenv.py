"""Rank, local rank and world size from the environment `torchrun` sets."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a (possibly single-process) distributed job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "DistEnv":
        """Read RANK, LOCAL_RANK and WORLD_SIZE; missing or malformed values mean a single process."""
        env = os.environ if environ is None else environ

        def num(key: str, default: int) -> int:
            try:
                return int(env.get(key, default))
            except ValueError:
                return default

        return cls(rank=num("RANK", 0), local_rank=num("LOCAL_RANK", 0), world_size=max(1, num("WORLD_SIZE", 1)))
