"""Gradient statistics on the device: parameter grouping, per-group moments, Welford over steps.

Everything here is pure tensor math (no recording, no hooks). Per-parameter reductions are
foreach launches or one small op per parameter tensor (O(#params) launches, never a Python loop
over elements); the combination into groups is a handful of `index_add_` calls on vectors of
length #params, in float64 (float32 on MPS).

Precision follows the gradients: fp16/bf16/fp32 tensors are reduced with fp32 accumulation, float64
tensors in float64 (`stat_dtype`), so a float64 model keeps float64 statistics; a model mixing
both gets its per-parameter vectors in float64.

DTensors (FSDP2's sharded parameters and gradients) are reduced on the shard this rank holds
(`local`: no copy, no communication); `ShardSums` then turns the per-tensor partial results
(squared norms, sums, counts, maxima) into whole-tensor ones with one small collective per mesh
dimension that shards them (one under FSDP2), so memory grows with the local shard only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed support has no DTensor
    DTensor = None

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


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of `t` this rank holds: a DTensor's local shard (the same storage, no
    communication; call under `torch.no_grad()`), any other tensor itself."""
    if DTensor is not None and isinstance(t, DTensor):
        return t.to_local()
    return t


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
    (accumulated in `stat_dtype`: no copy of a low-precision gradient, no narrowing of float64).
    An empty tensor (a rank's share of a parameter too small to split) gives 0, 0, 0."""
    vec = common_stat_dtype(grads)
    sum_P = torch.stack([g.sum(dtype=stat_dtype(g.dtype)) for g in grads]).to(vec)
    extremes = [torch.aminmax(g) if g.numel() else (g.new_zeros(()), g.new_zeros(())) for g in grads]
    low_P = torch.stack([lo.to(vec) for lo, _ in extremes])
    high_P = torch.stack([hi.to(vec) for _, hi in extremes])
    nnz_P = torch.stack([torch.count_nonzero(g) for g in grads])
    return sum_P, torch.maximum(-low_P, high_P), nnz_P


def group_stats(layout: GroupLayout, norms_P: torch.Tensor, sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                var_over_steps_G: torch.Tensor) -> torch.Tensor:
    """[G, 6] matrix of `STATS` per group, all elements of a group's gradients pooled, from the
    per-tensor norms and `param_sums` (sum, max |g|, nonzero count) of whole tensors.

    `var` is the population variance (divisor n, like `torch.var(unbiased=False)`) over all
    elements of the group, E[g^2] - E[g]^2 from per-tensor sums (fp32, float64 for float64
    tensors) combined in float64: one pass per tensor (torch's two-pass `var_mean` costs 10x more
    on CPU); it stays accurate to ~1e-5 relative while |mean| < 10 std, which gradients are (with
    rare exceptions such as a bias whose every element has the same gradient).
    """
    acc = acc_dtype(norms_P.device)
    sum_P, max_P, nnz_P = sums
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
    `update` returns, per tensor, the sum over its elements of each element's population variance
    over the steps seen (M2 / k); `group_noise` turns that into the gradient-noise signal, the mean
    over a group's elements. On a DTensor shard both state and result are the shard's (a partial
    sum that `ShardSums` adds up). A non-finite gradient makes its tensor's state NaN.
    """

    def __init__(self, n_params: int) -> None:
        self.mean: list[torch.Tensor | None] = [None] * n_params
        self.count = [0] * n_params
        self.m2_P: torch.Tensor | None = None
        self._index: dict[tuple[int, ...], torch.Tensor] = {}

    def update(self, present: tuple[int, ...], grads: list[torch.Tensor]) -> torch.Tensor:
        """Add one observation of every present gradient; per present tensor, the sum of its
        elements' variances over the steps seen [P]."""
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
        return self.m2_P[index] / k_P

    @staticmethod
    def group_noise(layout: GroupLayout, m2k_P: torch.Tensor) -> torch.Tensor:
        """Per group, the mean over its elements of each element's variance over the steps [G]."""
        acc = acc_dtype(m2k_P.device)
        return layout.sum(m2k_P.to(acc)) / layout.numel_G.to(acc)

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

    def update(self, layout: GroupLayout, norms_G: torch.Tensor) -> torch.Tensor:
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


class ShardSums:
    """Turns per-tensor results over DTensor shards (the part each rank holds) into whole-tensor ones.

    Built once from the watched tensors: a tensor is sharded along each mesh dimension whose
    placement is `Shard` (FSDP2: one, over all ranks; HSDP: the shard dimension only; a
    `Replicate` dimension needs nothing). `combine` packs the partial columns of the sharded
    tensors into one [S, C] matrix of fixed shape (S = every sharded tensor, zeros for those
    without a value here, so all ranks send the same shape whatever they hold) and reduces it with
    one collective per sharding process group: an `all_reduce` (sum) when every column adds up,
    else one all-gather of [world x S, C] summed and max-ed locally in rank order (identical on
    every rank). Under NCCL the collective is queued on the device: the host does not wait.
    Tensors that are not sharded (plain ones, DDP's) are returned as they were. Every rank of a
    group must call `combine` at the same points with the same number of columns.
    """

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.rows: dict[int, int] = {}  # tensor index -> row of the [S, C] matrix
        self.ways: list[int] = []  # per tensor, into how many shards it is split
        by_group: dict[Any, list[int]] = {}
        for i, t in enumerate(tensors):
            ways = 1
            for mesh, dim in _shard_dims(t):
                group = mesh.get_group(dim)
                by_group.setdefault(group, []).append(self.rows.setdefault(i, len(self.rows)))
                ways *= mesh.size(dim)
            self.ways.append(ways)
        self.groups = [(g, dist.get_world_size(g), rows) for g, rows in by_group.items()
                       if dist.get_world_size(g) > 1]
        self._index: dict[tuple[tuple[int, ...], torch.device], tuple[torch.Tensor, torch.Tensor, list[Any]]] = {}

    @property
    def active(self) -> bool:
        """True when some tensor is split over several ranks (combining then communicates)."""
        return bool(self.groups)

    def combine(self, present: tuple[int, ...], norms: Sequence[torch.Tensor], sums: Sequence[torch.Tensor] = (),
                maxes: Sequence[torch.Tensor] = ()) -> tuple[list[torch.Tensor], ...]:
        """Whole-tensor values of per-tensor columns (one entry per tensor in `present`, indices
        into the tensors given at construction): `norms` are 2-norms (their squares add up),
        `sums` add up, `maxes` take the largest. Each comes back in its own dtype."""
        norms, sums, maxes = list(norms), list(sums), list(maxes)
        if not self.groups:
            return norms, sums, maxes
        cols = norms + sums + maxes
        n_norm, n_sum = len(norms), len(norms) + len(sums)
        device = cols[0].device
        acc = acc_dtype(device)
        pos_Q, rows_Q, sels = self._indices(present, device)
        part_QC = torch.stack([c.to(acc) for c in cols], dim=1).index_select(0, pos_Q)
        part_QC[:, :n_norm] = part_QC[:, :n_norm].square()
        mat_SC = torch.zeros(len(self.rows), len(cols), dtype=acc, device=device).index_copy_(0, rows_Q, part_QC)
        for (group, world, _), sel in zip(self.groups, sels):
            sub_SC = mat_SC if sel is None else mat_SC.index_select(0, sel)
            sub_SC = _reduce(sub_SC, n_sum, group, world)
            mat_SC = sub_SC if sel is None else mat_SC.index_copy_(0, sel, sub_SC)
        whole_QC = mat_SC.index_select(0, rows_Q)
        whole_QC[:, :n_norm] = whole_QC[:, :n_norm].sqrt()
        out = [c.index_copy(0, pos_Q, whole_QC[:, j].to(c.dtype)) for j, c in enumerate(cols)]
        return out[:n_norm], out[n_norm:n_sum], out[n_sum:]

    def _indices(self, present: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[Any]]:
        key = (present, device)
        found = self._index.get(key)
        if found is None:
            if len(self._index) > 16:
                self._index.clear()
            pos = [k for k, i in enumerate(present) if i in self.rows]
            sels = [None if len(rows) == len(self.rows) else to_device(rows, torch.int64, device)
                    for _, _, rows in self.groups]
            found = self._index[key] = (to_device(pos, torch.int64, device),
                                        to_device([self.rows[present[k]] for k in pos], torch.int64, device), sels)
        return found


def _shard_dims(t: torch.Tensor) -> list[tuple[Any, int]]:
    """(device mesh, mesh dimension) for each dimension along which DTensor `t` is split."""
    if DTensor is None or not isinstance(t, DTensor):
        return []
    return [(t.device_mesh, d) for d, placement in enumerate(t.placements) if placement.is_shard()]


def _reduce(part_SC: torch.Tensor, n_sum: int, group: Any, world: int) -> torch.Tensor:
    """Sum the first `n_sum` columns over the ranks of `group`, take the maximum of the others."""
    if n_sum == part_SC.shape[1]:
        dist.all_reduce(part_SC, group=group)
        return part_SC
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
    out_WSC = part_SC.new_empty((world * part_SC.shape[0], part_SC.shape[1]))
    gather(out_WSC, part_SC.contiguous(), group=group)
    out_WSC = out_WSC.view(world, *part_SC.shape)
    return torch.cat([out_WSC[..., :n_sum].sum(0), out_WSC[..., n_sum:].amax(0)], dim=1)
