"""What the UI asks the poller for (`Request`) and what it gets back to draw (`Snapshot`).

Snapshots are built off the UI thread and are only read by the screens, so rendering never waits
on disk. Each screen draws from its own payload; a payload is None until first built.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from inspector.views.roll_call import RollCall

SCREENS = ("ranks", "run", "attention", "experts", "inference")
"""Screen names, in the order of their number keys."""

RUN_SERIES = {"loss": ("loss",), "grad norm": ("grad_norm/global", "grad_norm"), "learning rate": ("lr",)}
"""Charts of the Run screen: title -> scalar names to try, first found wins."""


@dataclass(frozen=True)
class Request:
    """The UI's current selection: the screen shown, the step cursor (None follows the newest step),
    the rank that per-rank screens show, the attention layer and head, and on the Inference screen
    the request and which of its attention maps."""

    screen: str = "ranks"
    cursor: int | None = None
    rank: int = 0
    layer: int | None = None
    head: int | None = None
    request_id: int | None = None     # Inference screen: the request shown (None: the slowest)
    query: int | None = None          # Inference screen: the step of the request's attention map shown


@dataclass
class RanksData:
    """Ranks screen: one row per rank, the min/median/max summary, recent step times per rank, all
    over the window ending at step `at` (None: the newest step)."""

    table: pd.DataFrame
    summary: pd.DataFrame
    history: dict[int, np.ndarray]
    at: int | None = None


@dataclass
class RollCallData:
    """Ranks screen before the records are read: the run's roll call (ranks, hosts, closed files,
    heartbeats) as of `now` (epoch seconds), drawn while the scored rank table is computed."""

    roll: RollCall
    now: float


@dataclass
class RunData:
    """Run screen: scalar series (step, value), the phase share bar and the anomaly feed."""

    series: dict[str, pd.DataFrame]
    series_names: dict[str, str | None]
    shares: dict[str, float]
    anomalies: pd.DataFrame
    at_cursor: dict[str, float]
    clip_threshold: float | None = None


@dataclass
class AttentionData:
    """Attention screen: the recorded steps/layers/heads, one head's map and the per-head stats."""

    steps: list[int]
    step: int | None
    layers: list[int]
    layer: int | None
    heads: list[int]
    head: int | None
    matrix: np.ndarray | None
    stats: pd.DataFrame
    pools: tuple[int, int, int, int] | None = None
    """(row_pool, key_pool, queries, keys) when the map is pooled; None when every cell is one query × key."""


@dataclass
class ExpertsData:
    """Experts screen: tokens per expert per layer at the step, and each layer's imbalance."""

    steps: list[int]
    step: int | None
    layers: list[int]
    counts: np.ndarray
    imbalance: pd.DataFrame
    starved: dict[int, dict[int, int]] = field(default_factory=dict)   # layer -> {expert: empty since step}


@dataclass
class InferenceData:
    """Inference screen: headline numbers, latency percentiles, throughput and occupancy over
    time, expert load by stage, the requests (slowest first) and the chosen request's tokens,
    per-token latency and attention of one of its recorded queries."""

    totals: Any
    latency: pd.DataFrame
    series: pd.DataFrame
    stages: dict[str, tuple[list[int], np.ndarray]]
    imbalance: pd.DataFrame
    requests: pd.DataFrame
    request_id: int | None = None
    tokens: list[str] = field(default_factory=list)
    prompt_len: int = 0
    latencies_ms: np.ndarray | None = None
    queue_ms: float = float("nan")
    choices: list[tuple[int, str]] = field(default_factory=list)
    query: int | None = None
    layers: list[int] = field(default_factory=list)
    layer: int | None = None
    heads: list[int] = field(default_factory=list)
    head: int | None = None
    attention: Any = None
    sampled: str = ""      # what the Inspector's own sampled iterations cost (`views.inference_cost.cost_text`)


@dataclass
class PluginData:
    """A plugin's screen: what its render function returned (a rich renderable, or text)."""

    plugin: str
    renderable: object


@dataclass
class Snapshot:
    """Everything drawn at one refresh. `error` replaces the whole UI (no readable run yet)."""

    request: Request
    header: str = ""
    status: str = "empty"
    last_step: int = -1
    ranks: list[int] = field(default_factory=list)
    error: str | None = None
    payload: RanksData | RollCallData | RunData | AttentionData | ExpertsData | InferenceData | PluginData | None = None
    problem: str | None = None
    data_problems: list[str] = field(default_factory=list)   # damage and loss the reader found
    serial: int = 0
    partial: bool = False
    """A first look drawn from the roll call alone; the snapshot built from the records follows."""

    @property
    def cursor_step(self) -> int:
        """The step the per-step screens show: the cursor, or the newest step when following."""
        c = self.request.cursor
        return max(self.last_step, 0) if c is None else c
