"""A step's expert load: the per-router sums a step gathers on the device, counted in bulk and packed
into one host copy per device (`_StepLoad`), decoded once on the writer thread."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from inspector.probes.experts.phases import DECODE, PREFILL, TRAIN
from inspector.probes.experts.routers import RouterInfo
from inspector.probes.host import HostValue, to_host

@dataclass
class _Acc:
    """What one router accumulated during the current step (device tensors, no sync)."""

    counts: torch.Tensor | None = None      # [E + 1] int64, the last bin counts invalid ids
    ids: list[torch.Tensor] = field(default_factory=list)  # expert ids not yet counted (copies, 1-d)
    ids_numel: int = 0
    entropy_sum: torch.Tensor | None = None  # 0-d fp32
    tokens: int = 0
    aux_sum: torch.Tensor | None = None
    aux_n: int = 0

    def merge(self, other: "_Acc") -> None:
        """Add `other`'s sums to these (device tensors, no sync)."""
        self.ids.extend(other.ids)
        self.ids_numel += other.ids_numel
        if other.counts is not None:
            self.counts = other.counts if self.counts is None else self.counts + other.counts
        if other.entropy_sum is not None:
            self.entropy_sum = other.entropy_sum if self.entropy_sum is None else self.entropy_sum + other.entropy_sum
        self.tokens += other.tokens
        if other.aux_sum is not None:
            self.aux_sum = other.aux_sum if self.aux_sum is None else self.aux_sum + other.aux_sum
        self.aux_n += other.aux_n



FOLD_IDS_AT = 1 << 22
"""Pending expert ids per router (elements) above which they are counted at once, bounding memory."""


def _add_counts(info: RouterInfo, indices_NK: torch.Tensor | None, acc: _Acc) -> None:
    """Keep one forward's expert choices for counting (one copy, as of the call); counted in bulk by
    `_count_ids` when the step is recorded, so a forward costs one device op."""
    if indices_NK is None:
        return
    ids = indices_NK.clone()              # integer ids carry no autograd history
    acc.ids.append(ids)
    acc.ids_numel += ids.numel()
    if acc.ids_numel >= FOLD_IDS_AT:
        _count_ids(info, acc)


def _binned(ids: list[torch.Tensor], e: int) -> torch.Tensor:
    """`ids` flattened into one int64 tensor of bins 0 … E, ids out of [0, E) in bin E (clamped into
    [-1, E], then -1 mod E + 1 is E too)."""
    try:
        flat = torch.cat(ids).reshape(-1)            # alike shapes (a router's [N, k]): one op
    except RuntimeError:
        flat = torch.cat([t.reshape(-1) for t in ids])
    return flat.long().clamp(-1, e).remainder_(e + 1)


def _count_ids(info: RouterInfo, acc: _Acc) -> None:
    """Fold the pending ids into `acc.counts` (on the device; ids out of range go to the last bin)."""
    if not acc.ids:
        return
    e = info.n_experts
    ids = acc.ids
    acc.ids, acc.ids_numel = [], 0
    counts = torch.bincount(_binned(ids, e), minlength=e + 1)
    acc.counts = counts if acc.counts is None else acc.counts + counts


def _count_all(items: list[tuple[RouterInfo, _Acc]]) -> None:
    """`_count_ids` of every router of `items`; the pending ids of routers alike (same number of
    experts, on one device) are counted by one bincount, each router's ids in its own bins."""
    groups: dict[tuple[int, torch.device], list[tuple[RouterInfo, _Acc]]] = {}
    for info, acc in items:
        if acc.ids:
            groups.setdefault((info.n_experts, acc.ids[0].device), []).append((info, acc))
    for (e, dev), group in groups.items():
        if len(group) == 1:
            _count_ids(*group[0])
            continue
        ids = [t for _, acc in group for t in acc.ids]
        sizes = [acc.ids_numel for _, acc in group]
        for _, acc in group:
            acc.ids, acc.ids_numel = [], 0
        bins = e + 1
        flat = _binned(ids, e)
        if len(set(sizes)) == 1:       # routers alike see the same tokens: one broadcast add
            flat.view(len(group), -1).add_(torch.arange(0, len(group) * bins, bins, device=dev).unsqueeze(1))
        else:                          # offsets built on the device from Python ints: no host copy, no sync
            flat += torch.cat([torch.full((n,), j * bins, dtype=torch.long, device=dev) for j, n in enumerate(sizes)])
        counts_RB = torch.bincount(flat, minlength=len(group) * bins).view(len(group), bins)
        for j, (_, acc) in enumerate(group):
            acc.counts = counts_RB[j] if acc.counts is None else acc.counts + counts_RB[j]



RING_FORWARDS = 64
"""Forwards a `ForwardLoads` ring holds before it folds them into its float64 sum."""


class ForwardLoads:
    """The load rows of the routers that keep their last forward's tokens per expert, for one
    stage: each forward's buffers are stacked into the next slot of a [RING_FORWARDS, R, E] ring of
    their own (exact) dtype, one op a forward; the ring is folded into a float64 sum [R, E] when it
    is full and when `take()` reads the window."""

    def __init__(self, buffers: list[torch.Tensor]) -> None:
        first = buffers[0]
        self.dtype = first.dtype
        self._ring = torch.empty(RING_FORWARDS, len(buffers), first.shape[0], dtype=first.dtype, device=first.device)
        self._slots = list(self._ring.unbind(0))      # views made once: no select op a forward
        self._n = 0
        self._total: torch.Tensor | None = None

    def add(self, buffers: list[torch.Tensor]) -> None:
        """One forward's buffers (all of `self.dtype`), as of the call."""
        torch.stack(buffers, out=self._slots[self._n])
        self._n += 1
        if self._n == RING_FORWARDS:
            self._fold()

    def take(self) -> torch.Tensor | None:
        """The sum [R, E] float64 of every forward added since the last `take` (None when none was);
        the ring is kept for the next window."""
        if self._n:
            self._fold()
        total, self._total = self._total, None
        return total

    def _fold(self) -> None:
        rows = self._ring[:self._n].sum(0, dtype=torch.float64)
        self._total = rows if self._total is None else self._total.add_(rows)
        self._n = 0


@dataclass
class _StepLoad:
    """One step's packed router numbers on their way to the host, decoded once when needed."""

    step: int
    rows: list[RouterInfo]
    parts: list[tuple[HostValue, list[tuple[int, int, bool]]]]  # per device: copy, (row, E, has bias)
    dropped_known: list[bool]
    phase: str = TRAIN
    _values: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def pack(cls, step: int, items: list[tuple[RouterInfo, _Acc]], phase: str = TRAIN) -> "_StepLoad":
        """Concatenate every router's numbers per device into one float64 tensor and start its copy.

        Per router: counts[E + 1] (last = invalid ids), entropy, aux, then bias[E] if it has one.
        Routers alike (same number of experts, all with a bias or none) are packed as the rows of
        one matrix: a dozen ops for 3 routers or 58.
        """
        groups: dict[torch.device, list[tuple[int, RouterInfo, _Acc, torch.Tensor | None]]] = {}
        for row, (info, a) in enumerate(items):
            groups.setdefault(a.counts.device, []).append((row, info, a, info.bias()))
        parts = []
        for dev, group in groups.items():
            layouts = [(row, info.n_experts, bias is not None) for row, info, _, bias in group]
            flat = _pack_rows(group, dev) if _uniform(layouts) and len(group) > 1 else None
            parts.append((to_host(flat if flat is not None else _pack_each(group, dev)), layouts))
        return cls(step, [info for info, _ in items], parts, [not info.capacity for info, _ in items], phase)

    def ready(self) -> bool:
        """True when every copy has landed (never blocks)."""
        return all(hv.ready() for hv, _ in self.parts)

    def values(self) -> dict[str, Any]:
        """Decoded per-row values (waits for the copies; call on the writer thread or when ready)."""
        with self._lock:
            if self._values is None:
                self._values = self._decode()
            return self._values

    def counts_alike(self) -> list[tuple[list[int], np.ndarray]]:
        """Per group of routers with the same number of experts: (their rows, counts [R, E]). Only
        the counts are decoded (all the judge reads); the writer thread decodes the other columns."""
        if self._values is None and all(_uniform(layouts) for _, layouts in self.parts):
            out = []
            for hv, layouts in self.parts:
                e, has_bias = layouts[0][1], layouts[0][2]
                block_RF = hv.resolve().reshape(len(layouts), e + 3 + (e if has_bias else 0))
                out.append(([row for row, _, _ in layouts], np.rint(block_RF[:, :e]).astype(np.int64)))
            return out
        counts = self.values()["counts"]
        by_experts: dict[int, list[int]] = {}
        for i, c in enumerate(counts):
            by_experts.setdefault(c.shape[0], []).append(i)
        return [(rows, np.stack([counts[i] for i in rows])) for rows in by_experts.values()]

    def _decode(self) -> dict[str, Any]:
        n = len(self.rows)
        out: dict[str, list[Any]] = {k: [None] * n for k in
                                     ("counts", "imbalance", "cv", "router_entropy", "dropped", "aux_loss", "bias")}
        for hv, layouts in self.parts:
            flat = hv.resolve()
            if _uniform(layouts):
                self._decode_uniform(flat, layouts, out)
                continue
            at = 0
            for row, e, has_bias in layouts:
                counts = np.rint(flat[at:at + e]).astype(np.int64)
                invalid = int(round(flat[at + e]))
                entropy, aux = float(flat[at + e + 1]), float(flat[at + e + 2])
                at += e + 3
                if has_bias:
                    out["bias"][row] = flat[at:at + e].astype(np.float32)
                    at += e
                mean = counts.mean()
                out["counts"][row] = counts
                out["imbalance"][row] = float(counts.max() / mean) if mean > 0 else float("nan")
                out["cv"][row] = float(counts.std() / mean) if mean > 0 else float("nan")
                out["router_entropy"][row] = entropy if np.isfinite(entropy) else None
                out["aux_loss"][row] = aux if np.isfinite(aux) else None
                out["dropped"][row] = invalid if self.dropped_known[row] else None
        return out

    def _decode_uniform(self, flat: np.ndarray, layouts: list[tuple[int, int, bool]], out: dict[str, list[Any]]) -> None:
        """`_decode` of routers with the same number of experts, all with a bias or none, all at once."""
        e, has_bias = layouts[0][1], layouts[0][2]
        block_RF = flat.reshape(len(layouts), e + 3 + (e if has_bias else 0))
        counts_RE = np.rint(block_RF[:, :e]).astype(np.int64)
        mean_R = counts_RE.mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            imbalance_R = np.where(mean_R > 0, counts_RE.max(axis=1) / mean_R, np.nan)
            cv_R = np.where(mean_R > 0, counts_RE.std(axis=1) / mean_R, np.nan)
        invalid_R = np.rint(block_RF[:, e]).astype(np.int64)
        for j, (row, _, _) in enumerate(layouts):
            entropy, aux = float(block_RF[j, e + 1]), float(block_RF[j, e + 2])
            out["counts"][row] = counts_RE[j]
            out["imbalance"][row] = float(imbalance_R[j])
            out["cv"][row] = float(cv_R[j])
            out["router_entropy"][row] = entropy if np.isfinite(entropy) else None
            out["aux_loss"][row] = aux if np.isfinite(aux) else None
            out["dropped"][row] = int(invalid_R[j]) if self.dropped_known[row] else None
            if has_bias:
                out["bias"][row] = block_RF[j, e + 3:].astype(np.float32)

    def columns(self) -> dict[str, Any]:
        """Columns for `Recorder.submit`: names and layers now, the numbers deferred."""
        cols: dict[str, Any] = {"name": [r.name for r in self.rows], "layer": [r.layer for r in self.rows]}
        if self.phase != TRAIN:
            cols["stage"] = [self.phase if self.phase in (PREFILL, DECODE) else None] * len(self.rows)
        for key in ("counts", "imbalance", "cv", "router_entropy", "dropped", "aux_loss", "bias"):
            cols[key] = _Column(self, key)
        return cols


def _uniform(layouts: list[tuple[int, int, bool]]) -> bool:
    """Every router of one host copy has the same number of experts, and a bias if the first has one."""
    return all(e == layouts[0][1] and has_bias == layouts[0][2] for _, e, has_bias in layouts)


def _pack_each(group: list[tuple[int, RouterInfo, _Acc, torch.Tensor | None]], dev: torch.device) -> torch.Tensor:
    """`_StepLoad.pack`'s layout for one device, router by router."""
    nan = torch.full((1,), float("nan"), dtype=torch.float64, device=dev)
    pieces: list[torch.Tensor] = []
    for _, _, a, bias in group:
        ent = (a.entropy_sum.double().reshape(1) / a.tokens) if a.entropy_sum is not None and a.tokens else nan
        aux = (a.aux_sum.double().reshape(1) / a.aux_n) if a.aux_sum is not None else nan
        pieces.extend([a.counts.double(), ent, aux])
        if bias is not None:
            pieces.append(bias.detach().double().reshape(-1).to(dev))
    return torch.cat(pieces)


def _pack_rows(group: list[tuple[int, RouterInfo, _Acc, torch.Tensor | None]], dev: torch.device) -> torch.Tensor | None:
    """`_StepLoad.pack`'s layout for routers alike on one device, built as a matrix [R, E + 3 (+ E)]
    and flattened; None when their tensors do not stack (mixed dtypes: packed one by one)."""
    accs = [a for _, _, a, _ in group]
    try:
        nan = torch.full((), float("nan"), dtype=torch.float32, device=dev)
        counts_RF = torch.stack([a.counts for a in accs]).double()
        ent_R = torch.stack([a.entropy_sum if a.entropy_sum is not None and a.tokens else nan for a in accs]).double()
        aux_R = torch.stack([a.aux_sum if a.aux_sum is not None else nan for a in accs]).double()
        per_R = torch.tensor([[max(a.tokens, 1), max(a.aux_n, 1)] for a in accs], dtype=torch.float64, device=dev)
        cols = [counts_RF, torch.stack([ent_R, aux_R], dim=1) / per_R]
        if group[0][3] is not None:
            cols.append(torch.stack([bias.detach().reshape(-1) for _, _, _, bias in group]).to(dev, torch.float64))
        return torch.cat(cols, dim=1).reshape(-1)
    except RuntimeError:
        return None


class _Column:
    """One deferred column of a `_StepLoad` (resolved on the Recorder's writer thread)."""

    __slots__ = ("load", "key")

    def __init__(self, load: _StepLoad, key: str) -> None:
        self.load = load
        self.key = key

    def resolve(self) -> Any:
        """The column's values, one per row."""
        values = self.load.values()[self.key]
        if self.key in ("counts", "bias") and len(values) == 1:
            return values[0]  # a one-row list column wants the row itself (None = null, not [null])
        return values
