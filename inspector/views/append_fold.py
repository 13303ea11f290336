"""State derived from an append-only Arrow table, extended by its new rows instead of rebuilt.

A live run's tables only grow: what a view derives from one (a layer's load matrix, the rows where
an expert's flag changes) can take in the rows that arrived since the last build. `AppendOnlyFold`
is that bookkeeping, once: how many rows were folded in, starting over when the table is shorter
than that (another thread folded a newer one) or the new rows do not extend the state (a step
recorded again, another width), and a lock, as the dashboard's callbacks run on several threads.
"""
from __future__ import annotations

import threading
from typing import Any


class AppendOnlyFold:
    """Subclasses say how to start over (`_reset`), take in rows (`_append`: False, with nothing
    changed, when they do not extend the state) and what a fold returns (`_result`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows = 0
        self._reset()

    def fold(self, table: Any) -> Any:
        """`_result()` over every row of `table`, of which the first `self.rows` were folded in before."""
        with self._lock:
            if table.num_rows < self.rows or not self._append(table.slice(self.rows)):
                self._reset()
                self._append(table)
            self.rows = table.num_rows
            return self._result()

    def _reset(self) -> None:
        raise NotImplementedError

    def _append(self, rows: Any) -> bool:
        raise NotImplementedError

    def _result(self) -> Any:
        raise NotImplementedError
