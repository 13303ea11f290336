"""LoRA adapters (Hu et al., 2021) for MLA's query and key/value up-projections, mergeable.

MLA has no standalone value projection: values come out of ``wkv_b`` (the latent up-projection
that yields both ``k_nope`` and ``v``). So the default targets are the query projection (``wq``,
or ``wq_b`` when ``q_lora_rank > 0``) and ``wkv_b``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TARGETS = ("wq", "wq_b", "wkv_b")


class LoRALinear(nn.Module):
    """``y = base(x) + (alpha / rank) * x A^T B^T`` around a frozen ``nn.Linear``.

    ``A`` is Kaiming-uniform, ``B`` zero, so a fresh adapter leaves outputs unchanged. `merge` folds
    the update into ``base.weight`` (then the adapter branch is skipped); `unmerge` undoes it.
    """

    def __init__(self, base: nn.Linear, rank: int = 16, alpha: float = 32.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError("LoRA rank must be >= 1")
        self.base = base
        self.base.weight.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dt))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False

    @property
    def in_features(self) -> int:
        """Input width of the wrapped layer."""
        return self.base.in_features

    @property
    def out_features(self) -> int:
        """Output width of the wrapped layer."""
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The low-rank update ``(alpha / rank) * B A`` in weight layout ``[out, in]``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @property
    def weight(self) -> torch.Tensor:
        """Effective weight (base plus update unless merged), for code that reads ``.weight``."""
        return self.base.weight if self.merged else self.base.weight + self.delta_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base projection plus the (unmerged) low-rank branch."""
        y = self.base(x)
        if not self.merged:
            y = y + F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scaling
        return y

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (idempotent)."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract a merged update again (idempotent)."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def apply_lora(
    model: nn.Module,
    rank: int = 16,
    alpha: float = 32.0,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    freeze_base: bool = True,
) -> list[str]:
    """Wrap every ``nn.Linear`` child named in ``targets`` with `LoRALinear`; return their names.

    With ``freeze_base`` every other parameter is frozen, so only adapters train.
    """
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    wrapped: list[str] = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ValueError(f"no nn.Linear named {targets} found")
    return wrapped


def lora_modules(model: nn.Module) -> list[LoRALinear]:
    """All adapters in ``model``."""
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> None:
    """Merge every adapter into its base weight."""
    for m in lora_modules(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo `merge_lora`."""
    for m in lora_modules(model):
        m.unmerge()


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (``lora_A`` / ``lora_B``) of ``model.state_dict()``."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A" in k or ".lora_B" in k}
