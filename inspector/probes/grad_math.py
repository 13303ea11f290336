"""Gradient statistics on the device: parameter grouping, per-group moments, Welford over steps.

Everything here is pure tensor math (no recording, no hooks). Per-parameter reductions are
foreach launches or one small op per parameter tensor (O(#params) launches, never a Python loop
over elements); the combination into groups is a handful of `index_add_` calls on vectors of
length #params, in float64 (float32 on MPS).

Precision follows the gradients: fp16/bf16/fp32 tensors are reduced with fp32 accumulation, float64
tensors in float64 (`stat_dtype`), so a float64 model keeps float64 statistics; a model mixing
both gets its per-parameter vectors in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

STATS = ("norm", "mean", "var", "max_abs", "zero_frac", "var_over_steps")
"""Column order of the [groups, 6] matrix `group_stats` returns."""


def group_key(name: str) -> str:
    """The group of a parameter when grouping by layer.

    Up to and including the first numeric component ("layers.3.attn.wq.weight" -> "layers.3",
    "0.weight" -> "0"); otherwise the module owning the parameter ("embed.weight" -> "embed",
    "model.norm.weight" -> "model.norm"), or the parameter name itself for a root parameter.
    """
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or name


def group_parameters(names: list[str], max_groups: int = 64) -> tuple[list[str], list[int]]:
    """(group names, group index of each parameter).

    One group per parameter when there are at most `max_groups` of them, else one group per layer
    (see `group_key`), in order of first appearance.
    """
    if len(names) <= max_groups:
        return list(names), list(range(len(names)))
    groups: dict[str, int] = {}
    of = [groups.setdefault(group_key(n), len(groups)) for n in names]
    return list(groups), of


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype for reductions of a tensor of `dtype`: float64 stays, the rest use fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def common_stat_dtype(tensors: list[torch.Tensor]) -> torch.dtype:
    """float64 if any tensor is float64, else float32: the dtype of per-tensor result vectors."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """2-norm of each tensor as one vector, each accumulated in its `stat_dtype` (foreach launches).

    `torch._foreach_norm(..., dtype=torch.float32)` refuses float64 input (it would narrow), so
    float64 tensors are reduced in float64 and, beside narrower ones, the vector is float64.
    """
    wide = [i for i, t in enumerate(tensors) if t.dtype == torch.float64]
    if not wide:
        return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float32))
    if len(wide) == len(tensors):
        return torch.stack(torch._foreach_norm(tensors, 2))
    narrow = [i for i, t in enumerate(tensors) if t.dtype != torch.float64]
    out: list[torch.Tensor | None] = [None] * len(tensors)
    for i, v in zip(wide, torch._foreach_norm([tensors[i] for i in wide], 2)):
        out[i] = v
    for i, v in zip(narrow, torch._foreach_norm([tensors[i] for i in narrow], 2, dtype=torch.float32)):
        out[i] = v.to(torch.float64)
    return torch.stack(out)


def to_device(values: list[float] | list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant vector on `device`, copied without making the host wait for the device."""
    cpu = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return cpu.pin_memory().to(device, non_blocking=True)
    return cpu.to(device)


@dataclass
class GroupLayout:
    """How the parameters present at a step (those with a gradient) map onto groups.

    `index_P` gives each present parameter's row in the compact [G] vectors; `groups` are the
    global group ids of those rows (for state kept across steps), `names` their names.
    """

    names: list[str]
    groups: list[int]
    group_ids: torch.Tensor
    index_P: torch.Tensor
    numel_P: torch.Tensor
    numel_G: torch.Tensor

    @classmethod
    def build(cls, present: tuple[int, ...], group_of: list[int], group_names: list[str],
              numels: list[int], device: torch.device) -> "GroupLayout":
        """Layout for the parameters `present` (indices into the model's parameter list)."""
        compact: dict[int, int] = {}
        rows = [compact.setdefault(group_of[i], len(compact)) for i in present]
        groups = list(compact)
        acc = acc_dtype(device)
        index_P = to_device(rows, torch.int64, device)
        numel_P = to_device([float(numels[i]) for i in present], acc, device)
        numel_G = torch.zeros(len(groups), dtype=acc, device=device).index_add_(0, index_P, numel_P)
        return cls([group_names[g] for g in groups], groups, to_device(groups, torch.int64, device),
                   index_P, numel_P, numel_G)

    def sum(self, values_P: torch.Tensor) -> torch.Tensor:
        """Per-group sums of a per-parameter vector."""
        return torch.zeros(len(self.groups), dtype=values_P.dtype, device=values_P.device).index_add_(
            0, self.index_P, values_P)

    def root_sum_sq(self, norms_P: torch.Tensor) -> torch.Tensor:
        """Per-group 2-norm from per-parameter 2-norms."""
        return self.sum(norms_P.square()).sqrt()


def acc_dtype(device: torch.device) -> torch.dtype:
    """float64 for the small per-parameter/per-group vectors, float32 where float64 is missing (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def param_sums(grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum_P, max |g|_P, nonzero count_P), one entry per tensor, each from one pass over it
    (accumulated in `stat_dtype`: no copy of a low-precision gradient, no narrowing of float64)."""
    vec = common_stat_dtype(grads)
    sum_P = torch.stack([g.sum(dtype=stat_dtype(g.dtype)) for g in grads]).to(vec)
    extremes = [torch.aminmax(g) for g in grads]
    low_P = torch.stack([lo.to(vec) for lo, _ in extremes])
    high_P = torch.stack([hi.to(vec) for _, hi in extremes])
    nnz_P = torch.stack([torch.count_nonzero(g) for g in grads])
    return sum_P, torch.maximum(-low_P, high_P), nnz_P


def group_stats(layout: GroupLayout, norms_P: torch.Tensor, grads: list[torch.Tensor],
                var_over_steps_G: torch.Tensor) -> torch.Tensor:
    """[G, 6] matrix of `STATS` per group, all elements of a group's gradients pooled.

    `var` is the population variance (divisor n, like `torch.var(unbiased=False)`) over all
    elements of the group, E[g^2] - E[g]^2 from per-tensor sums (fp32, float64 for float64
    tensors) combined in float64: one pass per tensor (torch's two-pass `var_mean` costs 10x more
    on CPU); it stays accurate to ~1e-5 relative while |mean| < 10 std, which gradients are (with
    rare exceptions such as a bias whose every element has the same gradient).
    """
    acc = acc_dtype(norms_P.device)
    sum_P, max_P, nnz_P = param_sums(grads)
    n_G = layout.numel_G.to(acc)
    mean_G = layout.sum(sum_P.to(acc)) / n_G
    sq_G = layout.sum(norms_P.to(acc).square())
    var_G = (sq_G / n_G - mean_G.square()).clamp(min=0)
    max_G = torch.zeros(len(layout.groups), dtype=max_P.dtype, device=max_P.device).scatter_reduce_(
        0, layout.index_P, max_P, "amax", include_self=False)
    zero_G = 1.0 - layout.sum(nnz_P.to(acc)) / n_G
    return torch.stack([sq_G.sqrt(), mean_G, var_G, max_G.to(acc), zero_G, var_over_steps_G.to(acc)], dim=1)


class ElementWelford:
    """Per-element running mean of each parameter's gradient over the sampled steps, and per tensor
    the sum over its elements of Welford's M2 (sum of squared deviations from the running mean).

    An element's M2 grows by (k-1)/k * d^2 at its k-th observation (d = g - mean before the update),
    so a tensor's summed M2 grows by (k-1)/k * ||d||^2: the per-element M2 is never stored. State:
    one tensor per parameter in its `stat_dtype` (memory 1x the parameters in fp32, or in float64
    for float64 parameters) and one float64 number per tensor.
    `update` returns, per group, the mean over the group's elements of each element's population
    variance over the steps seen (sum of M2 / k / elements): the gradient-noise signal. A
    non-finite gradient makes its tensor's state NaN.
    """

    def __init__(self, n_params: int) -> None:
        self.mean: list[torch.Tensor | None] = [None] * n_params
        self.count = [0] * n_params
        self.m2_P: torch.Tensor | None = None
        self._index: dict[tuple[int, ...], torch.Tensor] = {}

    def update(self, layout: GroupLayout, present: tuple[int, ...], grads: list[torch.Tensor],
               norms_G: torch.Tensor) -> torch.Tensor:
        """Add one observation of every present gradient; the per-group noise variance [G]."""
        for i, g in zip(present, grads):
            if self.mean[i] is None:
                self.mean[i] = torch.zeros_like(g, dtype=stat_dtype(g.dtype))
            self.count[i] += 1
        ks = [float(self.count[i]) for i in present]
        means = [self.mean[i] for i in present]
        delta = torch._foreach_sub([g if g.dtype == m.dtype else g.to(m.dtype) for g, m in zip(grads, means)],
                                   means)
        dnorm_P = norms(delta)
        same = len(set(ks)) == 1
        if same:  # the usual case: one pass less than per-tensor factors
            torch._foreach_add_(means, delta, alpha=1.0 / ks[0])
        else:
            torch._foreach_mul_(delta, [1.0 / k for k in ks])
            torch._foreach_add_(means, delta)
        del delta
        device = dnorm_P.device
        acc = acc_dtype(device)
        if self.m2_P is None or self.m2_P.device != device:
            self.m2_P = torch.zeros(len(self.count), dtype=acc, device=device)
            self._index.clear()
        index = self._index.get(present)
        if index is None:
            if len(self._index) > 16:
                self._index.clear()
            index = self._index[present] = to_device(list(present), torch.int64, device)
        if same:
            k_P: torch.Tensor | float = ks[0]
            weight: torch.Tensor | float = (ks[0] - 1.0) / ks[0]
        else:
            k_P = to_device(ks, acc, device)
            weight = (k_P - 1.0) / k_P
        self.m2_P.index_add_(0, index, dnorm_P.to(acc).square() * weight)
        return layout.sum(self.m2_P[index] / k_P) / layout.numel_G.to(acc)

    def clear(self) -> None:
        """Free the state."""
        n = len(self.count)
        self.mean, self.count, self.m2_P = [None] * n, [0] * n, None
        self._index.clear()


class NormWelford:
    """Running variance over the sampled steps of each group's gradient norm (the fallback for
    large models: state is three numbers per group instead of two copies of the parameters)."""

    def __init__(self, n_groups: int) -> None:
        self.n_groups = n_groups
        self.state: torch.Tensor | None = None  # [3, groups]: count, mean, M2

    def update(self, layout: GroupLayout, present: tuple[int, ...], grads: list[torch.Tensor],
               norms_G: torch.Tensor) -> torch.Tensor:
        """Add one observation of each present group's norm; the per-group variance [G]."""
        if self.state is None:
            self.state = torch.zeros(3, self.n_groups, dtype=norms_G.dtype, device=norms_G.device)
        count, mean, m2 = self.state
        gid = layout.group_ids
        count.index_add_(0, gid, torch.ones_like(norms_G))
        k = count[gid]
        delta = norms_G - mean[gid]
        mean.index_add_(0, gid, delta / k)
        m2.index_add_(0, gid, delta * (norms_G - mean[gid]))
        return m2[gid] / k

    def clear(self) -> None:
        """Free the state."""
        self.state = None
