"""Where each expert's flagged stretches start, for any recorded step, from one pass over a layer.

A rule such as "starved" (no token) or "hot" (≥ 3× the balanced share) flags each (recorded step,
expert); the dashboard asks, at the step it shows, since when each flagged expert has been flagged.
An expert hot for the whole of a 10,000-step run makes that question reach back to the first step,
for every step the user moves to. `FlagChanges` keeps, per layer, only the rows where an expert's
flag changes (sorted keys `expert * rows + row`), so each later question is one binary search per
expert, not a pass over the counts; `GrowingFlagChanges` extends them as a live run's rows arrive.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from inspector.views.append_fold import AppendOnlyFold


def stretch_due(steps: np.ndarray, start_E: np.ndarray, last: int, min_steps: int, min_samples: int) -> dict[int, int]:
    """{expert: first step of its stretch} for the experts whose flagged stretch, from row `start_E`
    (-1 or past `last`: not flagged at `last`) through row `last` of `steps`, spans at least
    `min_samples` recorded and `min_steps` training steps (the experts probe's reporting rule)."""
    flagged_E = (start_E >= 0) & (start_E <= last)
    start_E = np.where(flagged_E, start_E, last)
    since_E = steps[start_E]
    due_E = flagged_E & (last + 1 - start_E >= min_samples) & (steps[last] - since_E + 1 >= min_steps)
    return {int(e): int(since_E[e]) for e in np.flatnonzero(due_E)}


@dataclass(frozen=True)
class FlagChanges:
    """One layer's flag changes: `steps` [S] its recorded steps; `keys` sorted `expert * S + row` of
    every row where that expert's flag differs from the row before (row 0: where it is flagged);
    `on` whether the flag is set from that row; `experts` E."""

    steps: np.ndarray
    keys: np.ndarray
    on: np.ndarray
    experts: int

    @classmethod
    def of(cls, steps_S: np.ndarray, flags_SE: np.ndarray) -> "FlagChanges":
        """The changes of `flags_SE` [S, E] over `steps_S` (sorted)."""
        flags_SE = np.asarray(flags_SE, dtype=bool)
        S, E = flags_SE.shape
        before_SE = np.zeros_like(flags_SE)
        before_SE[1:] = flags_SE[:-1]
        expert_C, row_C = np.nonzero((flags_SE != before_SE).T)       # sorted by expert, then row
        return cls(np.asarray(steps_S, dtype=np.int64), expert_C.astype(np.int64) * S + row_C,
                   flags_SE[row_C, expert_C], E)

    def starts_at(self, row: int) -> np.ndarray:
        """Per expert, the first row of its flagged stretch through `row` (-1: not flagged at `row`)."""
        S, E = len(self.steps), self.experts
        experts = np.arange(E, dtype=np.int64)
        pos_E = np.searchsorted(self.keys, experts * S + row, side="right") - 1
        safe_E = np.maximum(pos_E, 0)
        found_E = (pos_E >= 0) & (self.keys[safe_E] // max(S, 1) == experts) & self.on[safe_E] if len(self.keys) \
            else np.zeros(E, dtype=bool)
        return np.where(found_E, self.keys[safe_E] % max(S, 1) if len(self.keys) else -1, -1)

    def due_at(self, step: int, min_steps: int, min_samples: int) -> dict[int, int]:
        """`stretch_due` at the last recorded row at or before `step` ({} before the first)."""
        row = int(np.searchsorted(self.steps, step, side="right")) - 1
        if row < 0:
            return {}
        return stretch_due(self.steps, self.starts_at(row), row, min_steps, min_samples)


class _LayerChanges:
    """One layer's flag changes gathered so far, in row order (`snapshot` sorts them by expert)."""

    def __init__(self, experts: int) -> None:
        self.experts = experts
        self.steps: list[np.ndarray] = []
        self.rows = 0
        self.last_E = np.zeros(experts, dtype=bool)
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []   # (expert, row, on) per fold
        self._snapshot: FlagChanges | None = None

    def last_step(self) -> int | None:
        """The newest step folded in (None before the first)."""
        return int(self.steps[-1][-1]) if self.steps else None

    def extend(self, steps_S: np.ndarray, flags_SE: np.ndarray) -> None:
        """Append rows `steps_S` [S] with their flags [S, E] (steps after every row folded before)."""
        before_SE = np.empty_like(flags_SE)
        before_SE[0] = self.last_E
        before_SE[1:] = flags_SE[:-1]
        expert_C, row_C = np.nonzero((flags_SE != before_SE).T)
        self.parts.append((expert_C.astype(np.int64), row_C.astype(np.int64) + self.rows, flags_SE[row_C, expert_C]))
        self.steps.append(np.asarray(steps_S, dtype=np.int64))
        self.rows += len(steps_S)
        self.last_E = flags_SE[-1].copy()
        self._snapshot = None

    def snapshot(self) -> FlagChanges:
        """The `FlagChanges` of every row so far (kept until the next `extend`)."""
        if self._snapshot is None:
            expert_C, row_C, on_C = (np.concatenate(p) for p in zip(*self.parts))
            order = np.argsort(expert_C, kind="stable")         # rows are appended in order: stays sorted within
            self._snapshot = FlagChanges(np.concatenate(self.steps), expert_C[order] * self.rows + row_C[order],
                                         on_C[order], self.experts)
        return self._snapshot


class GrowingFlagChanges(AppendOnlyFold):
    """`FlagChanges` of one rank's load (an append-only table, each layer's steps ascending), extended
    by the rows that arrived since the last fold: following a live run costs its new rows. Rows that
    do not extend a layer in step order, or another number of experts, make it start over.
    `loads_of(rows)`: {layer: (steps [S], counts [S, E])} of some rows of the table."""

    def __init__(self, flag_rows: Callable[[np.ndarray], np.ndarray],
                 loads_of: Callable[[Any], dict[int, tuple[np.ndarray, np.ndarray]]]) -> None:
        self.flag_rows = flag_rows
        self.loads_of = loads_of
        super().__init__()

    def _reset(self) -> None:
        self._layers: dict[int, _LayerChanges] = {}

    def _result(self) -> dict[int, FlagChanges]:
        return {layer: changes.snapshot() for layer, changes in self._layers.items() if changes.rows}

    def _append(self, rows: Any) -> bool:
        return self._extend(self.loads_of(rows))

    def _extend(self, loads: dict[int, tuple[np.ndarray, np.ndarray]]) -> bool:
        for layer, (steps_S, counts_SE) in loads.items():
            known = self._layers.get(int(layer))
            last = known.last_step() if known is not None else None
            if known is not None and (counts_SE.shape[1] != known.experts or (last is not None and len(steps_S)
                                                                              and steps_S[0] <= last)):
                return False
        for layer, (steps_S, counts_SE) in loads.items():
            if len(steps_S):
                changes = self._layers.setdefault(int(layer), _LayerChanges(counts_SE.shape[1]))
                changes.extend(steps_S, np.asarray(self.flag_rows(counts_SE), dtype=bool))
        return True
