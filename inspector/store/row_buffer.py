"""`RowBuffer`: rows of one kind kept on the producer's side and handed to the Recorder in batches.

For a producer that writes a small row very often (an inference watch: one row per decode
iteration, every few milliseconds): a tuple appended to a list costs a fraction of a `submit`
(a dict per row, a queue put with its lock and wake-up). The rows go to the Recorder as one
multi-row chunk when `max_rows` are kept or `max_age_s` has passed since the first of them, at
every `Recorder.flush()` / `close()` (the buffer registers itself), and at `hand_over()`.
A process killed outright loses the rows kept, at most `max_age_s` of them (the Recorder's own
coalescing window is of the same order).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from inspector.schema import KindSpec


class RowBuffer:
    """Rows of `kind` with `columns` (their values in that order), plus each row's step and wall time."""

    def __init__(self, recorder: Any, kind: KindSpec | str, columns: Sequence[str], *, max_rows: int = 64,
                 max_age_s: float = 0.25) -> None:
        self.recorder = recorder
        self.kind = kind
        self.columns = tuple(columns)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._rows: list[tuple[Any, ...]] = []
        self._since = 0.0
        recorder.add_buffer(self.hand_over)

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, step: int, values: tuple[Any, ...]) -> None:
        """Keep one row (`values` in `columns` order) at `step`, stamped now; hand the rows over
        when enough are kept or the first is old enough."""
        now = time.monotonic()
        rows = self._rows
        if not rows:
            self._since = now
        rows.append((step, time.time(), *values))
        if len(rows) >= self.max_rows or now - self._since >= self.max_age_s:
            self.hand_over()

    def hand_over(self) -> None:
        """Submit the rows kept as one chunk (nothing when none)."""
        rows, self._rows = self._rows, []
        if not rows:
            return
        names = ("step", "wall_time", *self.columns)
        self.recorder.submit(self.kind, {name: list(values) for name, values in zip(names, zip(*rows))}, len(rows))

    def close(self) -> None:
        """Hand the rows over and stop following the Recorder's flushes."""
        self.hand_over()
        self.recorder.remove_buffer(self.hand_over)
