"""Checkpoint files: plain tensors and Python primitives only, loadable with ``weights_only=True``."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    """``out_dir/ckpt_{step:07d}.pt``."""
    return Path(out_dir) / f"ckpt_{step:07d}.pt"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The highest-step ``ckpt_*.pt`` in ``out_dir``, or None."""
    d = Path(out_dir)
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_PATTERN.match(p.name))]
    return max(found)[1] if found else None


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and ``random`` generator states as tensors / plain types."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``."""
    return torch.load(path, map_location=map_location, weights_only=True)


def load_model(path: str | Path, device: str | torch.device = "cpu", merge_adapters: bool = True) -> torch.nn.Module:
    """Rebuild the `Transformer` stored in a training checkpoint (LoRA adapters merged by default)."""
    from inspector_engine.config import ModelConfig
    from inspector_engine.model import Transformer, apply_lora, merge_lora

    state = load_checkpoint(path, map_location=device)
    model = Transformer(ModelConfig.from_dict(state["model_config"]))
    tcfg = state.get("train_config", {})
    if tcfg.get("lora_rank", 0):
        apply_lora(model, rank=tcfg["lora_rank"], alpha=tcfg["lora_alpha"])
    model.load_state_dict(state["model"])
    if merge_adapters:
        merge_lora(model)
    return model.to(device).eval()
