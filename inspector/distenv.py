"""Rank, local rank and world size of this process: from torch.distributed when it is set up,
else from the environment `torchrun` sets.

`torch.multiprocessing.spawn` jobs pass their rank to `init_process_group(rank=r, ...)` and set no
RANK variable, so the environment alone would put every worker in rank 0. `DistEnv.detect()` asks
an initialised default process group first. It never imports torch itself (the store and the UIs
must stay importable without it): it looks only at a torch some other code already imported.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping


def _num(env: Mapping[str, str], key: str, default: int) -> int:
    """`env[key]` as an int; `default` when missing or malformed."""
    try:
        return int(env.get(key, default))
    except (TypeError, ValueError):
        return default


def _initialized_dist() -> Any | None:
    """`torch.distributed` if torch is already imported and its default process group is up."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist
    except Exception:  # a half-imported or unusual torch: fall back to the environment
        return None
    return None


def _local_rank(torch: Any, environ: Mapping[str, str]) -> int:
    """LOCAL_RANK if set, else the CUDA device this process already uses, else 0 (never starts CUDA)."""
    if "LOCAL_RANK" in environ:
        return _num(environ, "LOCAL_RANK", 0)
    try:
        if torch.cuda.is_initialized():
            return int(torch.cuda.current_device())
    except Exception:
        pass
    return 0


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
        return cls(rank=_num(env, "RANK", 0), local_rank=_num(env, "LOCAL_RANK", 0),
                   world_size=max(1, _num(env, "WORLD_SIZE", 1)))

    @classmethod
    def detect(cls, environ: Mapping[str, str] | None = None) -> "DistEnv":
        """Rank and world size of an initialised torch.distributed default group, else `from_environ`.

        Never imports torch and never raises.
        """
        env = os.environ if environ is None else environ
        dist = _initialized_dist()
        if dist is not None:
            try:
                rank, world = int(dist.get_rank()), int(dist.get_world_size())
                if rank >= 0 and world >= 1:
                    return cls(rank=rank, local_rank=_local_rank(sys.modules["torch"], env), world_size=world)
            except Exception:
                pass
        try:
            return cls.from_environ(env)
        except Exception:
            return cls()
