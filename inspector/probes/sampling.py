"""How often each probe records: heavy probes are sampled, scalars are recorded every step."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Mapping, Sequence


@dataclass(frozen=True)
class Sampling:
    """Periods in steps per probe (1 = every step), and which attention layers/heads to keep.

    Defaults keep the default probe set within its overhead budget; `watch(every=...)` overrides
    them: an int sets every period, a mapping sets the named ones.
    """

    attention: int = 100
    activations: int = 100
    gradients: int = 50
    timing: int = 1
    experts: int = 10
    anomalies: int = 1
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    max_attention_rows: int = 128
    attention_positions: tuple[int, ...] = (-1,)
    system_interval_s: float = 1.0
    offsets: Mapping[str, int] = field(default_factory=dict)
    """Steps by which a probe's sampled steps are shifted (`due` at `offset`, `offset + period`, …):
    two heavy probes with one period, offset by half of it, never add their cost to the same step."""

    def due(self, probe: str, step: int) -> bool:
        """True when `probe` records at `step`."""
        period = getattr(self, probe, 1)
        return period > 0 and (step - self.offsets.get(probe, 0)) % period == 0

    def wants_layer(self, layer: int | None) -> bool:
        """True when attention of `layer` is to be kept."""
        return self.layers is None or layer is None or layer in self.layers

    @classmethod
    def build(cls, every: int | Mapping[str, int] | None = None, *, layers: Sequence[int] | None = None,
              heads: Sequence[int] | None = None, **overrides: object) -> "Sampling":
        """Defaults, changed by `every` (int: all periods; mapping: named periods) and overrides."""
        base = cls()
        periods = {f.name for f in fields(cls) if f.type in ("int", int)} - {"max_attention_rows"}
        changes: dict[str, object] = dict(overrides)
        if isinstance(every, int):
            if every < 1:
                raise ValueError("every must be >= 1")
            changes.update({name: every for name in periods})
        elif every is not None:
            unknown = set(every) - periods
            if unknown:
                raise ValueError(f"unknown probe period(s) {sorted(unknown)}; known: {sorted(periods)}")
            changes.update(every)
        if layers is not None:
            changes["layers"] = tuple(int(x) for x in layers)
        if heads is not None:
            changes["heads"] = tuple(int(x) for x in heads)
        return replace(base, **changes)
