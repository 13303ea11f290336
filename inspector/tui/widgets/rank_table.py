"""The per-rank table: sortable, stragglers highlighted, a step-time sparkline per rank."""
from __future__ import annotations

from typing import TYPE_CHECKING

import math

from rich.text import Text
from textual.widgets import DataTable

from inspector.tui.widgets.format import gib, num

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

COLUMNS = [("rank", "rank"), ("node", "node"), ("straggler_score", "holds up"), ("step", "step"), ("step_ms", "step ms"), ("compute_ms", "compute ms"), ("cpu_wait_ms", "CPU wait"),
           ("tokens_per_s", "tok/s"),
           ("loss", "loss"), ("grad_norm", "grad norm"), ("gpu_util", "GPU %"), ("gpu_mem_used", "GPU mem"),
           ("power_w", "power"), ("temp_c", "temp"), ("status", "status"), ("history", "step time")]
"""(key, label) of the table's columns, in order."""

WIDTHS = {"rank": 6, "node": 10, "straggler_score": 8, "step": 6, "step_ms": 7, "compute_ms": 10, "cpu_wait_ms": 8, "tokens_per_s": 7, "loss": 7, "grad_norm": 9,
          "gpu_util": 5, "gpu_mem_used": 8, "power_w": 5, "temp_c": 5, "status": 8, "history": 14}
"""Fixed column widths, shared by the rank table and its summary so their columns line up."""

SORTABLE = [k for k, _ in COLUMNS if k not in ("history",)]
SPARK_WIDTH = 14
STATUS_STYLE = {"live": "green", "finished": "blue", "crashed": "bold red", "damaged": "bold red", "failed": "bold red",
                "missing": "bold yellow", "stalled": "bold red", "waiting": "bold yellow",
                "silent": "bold red"}


def cells(row: pd.Series | dict, history: np.ndarray | None = None,
          scale: tuple[float, float] | None = None) -> list[Text]:
    """The table cells of one rank_table row (or of a summary row, which has no rank/status).

    `scale` is the (low, high) step time shared by every rank's sparkline, so a slow rank stands out.
    """
    straggler = bool(row.get("straggler", False))
    hot = "bold red" if straggler else ""
    rank = row.get("rank")
    values = [
        Text(str(rank) if isinstance(rank, str) else num(rank, "{:.0f}") + (" ⚠" if straggler else ""), style=hot),
        Text(str(row.get("node") or "")[:10]),
        Text(_score(row.get("straggler_score")), style=hot),
        Text(num(row.get("step"), "{:,.0f}", "-")),
        Text(num(row.get("step_ms"), "{:.1f}"), style=hot),
        Text(num(row.get("compute_ms"), "{:.1f}"), style=hot),
        Text(num(row.get("cpu_wait_ms"), "{:.1f}")),
        Text(num(row.get("tokens_per_s"), "{:,.0f}")),
        Text(num(row.get("loss"), "{:.4f}")),
        Text(num(row.get("grad_norm"), "{:.3f}")),
        Text(num(row.get("gpu_util"), "{:.0f}%")),
        Text(gib(row.get("gpu_mem_used"), row.get("gpu_mem_total"))),
        Text(num(row.get("power_w"), "{:.0f}W")),
        Text(num(row.get("temp_c"), "{:.0f}°C")),
    ]
    status = row.get("status")
    if isinstance(status, str):
        values.append(Text(status, style=STATUS_STYLE.get(status, "")))
    else:
        values.append(Text(""))
    lo, hi = scale if scale is not None else (None, None)
    spark = ""
    if history is not None:
        from inspector.tui.widgets.ramp import text_sparkline  # numpy: off the roll call's path (first frame)

        spark = text_sparkline(history, SPARK_WIDTH, lo, hi)
    values.append(Text(spark, style="red" if straggler else "cyan"))
    return [v if v.plain else Text("") for v in values]


def _score(value) -> str:
    if value is None:
        return ""
    return f"{value:.0f} ms" if math.isfinite(value) else ""


def shared_scale(history: dict[int, np.ndarray]) -> tuple[float, float] | None:
    """(0, the largest recent step time of any rank): one scale for every rank's sparkline."""
    import numpy as np

    tops = [float(np.nanmax(h)) for h in history.values() if len(h) and np.isfinite(h).any()]
    return (0.0, max(tops)) if tops else None


def sort_table(table: pd.DataFrame, key: str, descending: bool) -> pd.DataFrame:
    """`table` sorted by column `key` (missing values last), ties by rank; by the straggler score:
    grouped by node, the worst node first (`views.ranks.by_node`; reversed: the best first)."""
    if key not in table:
        return table
    if key == "straggler_score":
        from inspector.views.ranks import by_node
        ordered = by_node(table)
        return ordered if descending else ordered.iloc[::-1]
    return table.sort_values([key, "rank"], ascending=[not descending, True], na_position="last", kind="stable")


class RankTable(DataTable):
    """A DataTable of ranks that keeps its cursor on the same rank across refreshes (not across the
    roll call's first rows: the scored table starts at its top, the worst rank)."""

    _roll_call = False

    def on_mount(self) -> None:
        """Create the columns."""
        for key, label in COLUMNS:
            self.add_column(label, key=key, width=WIDTHS[key])

    def show(self, table: pd.DataFrame, history: dict[int, np.ndarray], sort_key: str, descending: bool) -> None:
        """Replace the rows with `table` sorted by `sort_key`."""
        keep = None
        if self.row_count and not self._roll_call:
            try:
                keep = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
            except Exception:
                keep = None
        self.clear()
        self._roll_call = False
        scale = shared_scale(history)
        for _, row in sort_table(table, sort_key, descending).iterrows():
            r = int(row["rank"])
            self.add_row(*cells(row, history.get(r), scale), key=str(r))
        if keep is not None and keep in self.rows:
            self.move_cursor(row=self.get_row_index(keep), animate=False)

    def show_rows(self, rows: list[dict]) -> None:
        """Replace the rows with plain `rows` (the roll call's: rank, node, step, status), in order;
        the columns a row does not have stay blank (not read yet, which is not "N/A")."""
        self.clear()
        self._roll_call = True
        keys = [key for key, _ in COLUMNS]
        for row in rows:
            self.add_row(*(c if k in row else Text("") for k, c in zip(keys, cells(row))), key=str(row["rank"]))

    def rank_order(self) -> list[int]:
        """The ranks in displayed order."""
        return [int(k.value) for k in self.rows]

    def straggler_ranks(self) -> list[int]:
        """Ranks whose row carries the straggler mark."""
        return [int(k.value) for k in self.rows if "⚠" in self.get_row(k)[0].plain]
