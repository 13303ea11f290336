"""Colour scales anchored to what the values mean, shared by the dashboard and the terminal UI.

An autoscaled colour bar stretches whatever range the data happens to span over the whole ramp:
entropies of 3.8773–3.8777 then look like one collapsed head, and 95–199 tokens per expert look
like a starved expert. A `Scale` instead fixes its ends to the possible or meaningful range
(entropy 0 … ln(keys), probabilities 0 … 1, counts from 0, load centred on the balanced 1×) and
carries the true data range in its label, so every UI says both.

The UIs pick the colours; a scale says which values sit where on the ramp (`position`) and which
end means trouble (`alarm`), so both UIs draw the same thing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Alarm = Literal["low", "high", "both", "none"]


@dataclass(frozen=True)
class Scale:
    """Where values sit on a colour ramp [0, 1], and the one-line statement of what it spans.

    `position(v)` is ((v − lo) / (hi − lo)) ** gamma, clipped to [0, 1]; with a `centre` the scale
    is diverging: lo … centre maps to 0 … 0.5 and centre … hi to 0.5 … 1, so the centre always
    gets the ramp's neutral middle colour however lopsided the data is.
    """

    lo: float
    hi: float
    data_lo: float                 # true range of the finite data (NaN when there is none)
    data_hi: float
    label: str                     # e.g. "entropy 3.8773–3.8777 of max 4.159 nats (ln 64 keys)"
    short: str                     # a colour-bar title, e.g. "nats, 0 … ln 64"
    alarm: Alarm = "none"          # the end of the ramp that means trouble ("both": diverging)
    centre: float | None = None
    gamma: float = 1.0

    def position(self, values: np.ndarray | float) -> np.ndarray:
        """Ramp positions in [0, 1] of `values` (NaN stays NaN; values outside lo … hi are clipped)."""
        v = np.asarray(values, dtype=np.float64)
        if self.centre is not None:
            below = (v - self.lo) / max(self.centre - self.lo, 1e-300) * 0.5
            above = 0.5 + (v - self.centre) / max(self.hi - self.centre, 1e-300) * 0.5
            pos = np.where(v <= self.centre, below, above)
        else:
            pos = (v - self.lo) / (self.hi - self.lo)
        with np.errstate(invalid="ignore"):
            return np.clip(pos, 0.0, 1.0) ** self.gamma

    def value_at(self, positions: np.ndarray | float) -> np.ndarray:
        """The values drawn at ramp `positions` (the inverse of `position` inside lo … hi)."""
        p = np.clip(np.asarray(positions, dtype=np.float64), 0.0, 1.0) ** (1.0 / self.gamma)
        if self.centre is not None:
            return np.where(p <= 0.5, self.lo + p * 2 * (self.centre - self.lo),
                            self.centre + (p - 0.5) * 2 * (self.hi - self.centre))
        return self.lo + p * (self.hi - self.lo)


def data_range(values: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values; (NaN, NaN) when there is none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return (float(v.min()), float(v.max())) if v.size else (math.nan, math.nan)


def _span(lo: float, hi: float, fmt: str) -> str:
    if not math.isfinite(lo):
        return "no data"
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}–{hi:{fmt}}"


def _digits(lo: float, hi: float) -> str:
    """A format whose last decimal shows the spread of lo … hi (3 to 6 decimals)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return ".3f"
    return f".{min(6, max(3, math.ceil(-math.log10(hi - lo))))}f"


def entropy_scale(values: np.ndarray, keys: int | None, *, min_keys: int | None = None) -> Scale:
    """Mean row entropy (nats) on 0 … ln(keys), the most a row over `keys` keys can have; low is alarming.

    `keys` is the largest key count among the rows drawn; when they differ (`min_keys` < `keys`)
    the label says so. Without a key count the top is the data's own maximum, and the label says so.
    """
    lo, hi = data_range(values)
    span = _span(lo, hi, _digits(lo, hi))
    if keys and keys > 1:
        top = math.log(keys)
        mixed = f", the largest of {min_keys}–{keys}" if min_keys and min_keys != keys else ""
        label = f"entropy {span} of max {top:.3f} nats (ln {keys} keys{mixed})"
        short = f"nats, 0 … ln {keys} = {top:.3g}"
    else:
        top = hi if math.isfinite(hi) and hi > 0 else 1.0
        label = f"entropy {span} nats (key count not recorded: scale 0 … data max)"
        short = "nats, 0 … data max"
    if math.isfinite(hi) and hi > top:
        top = hi                   # never clip real data (e.g. more keys than the map recorded)
    return Scale(lo=0.0, hi=top, data_lo=lo, data_hi=hi, label=label, short=short, alarm="low")


def weight_scale(values: np.ndarray) -> Scale:
    """Attention probabilities on 0 … 1 with a square-root ramp (1/128 still shows; a uniform row stays flat)."""
    lo, hi = data_range(values)
    return Scale(lo=0.0, hi=1.0, data_lo=lo, data_hi=hi, gamma=0.5,
                 label=f"weight {_span(lo, hi, '.3f')} of 0 … 1 (√ scale)", short="weight, 0 … 1 (√)")


def count_scale(counts: np.ndarray) -> Scale:
    """Tokens per expert from 0 to the largest count, with the balanced mean per expert stated."""
    c = np.asarray(counts, dtype=np.float64)
    lo, hi = data_range(c)
    means = c.mean(axis=-1) if c.size else np.empty(0)
    balanced = _span(*data_range(means), ",.0f")
    return Scale(lo=0.0, hi=hi if math.isfinite(hi) and hi > 0 else 1.0, data_lo=lo, data_hi=hi,
                 label=f"tokens {_span(lo, hi, ',.0f')} per expert (balanced {balanced})",
                 short=f"tokens, 0 … {hi:,.0f}" if math.isfinite(hi) else "tokens")


def share_scale(shares: np.ndarray, experts: int) -> Scale:
    """Share of a layer's tokens on 0 … 1, with the balanced share 1/experts stated."""
    lo, hi = data_range(shares)
    even = 1.0 / experts if experts else math.nan
    return Scale(lo=0.0, hi=1.0, data_lo=lo, data_hi=hi, short="share, 0 … 1",
                 label=f"share {_span(lo, hi, '.3f')} of 0 … 1 (balanced 1/{experts} = {even:.3f})")


def load_ratio(counts: np.ndarray) -> np.ndarray:
    """Tokens per expert over the balanced load (each row's mean): 1 = balanced, 0 = starved (NaN for an empty row)."""
    c = np.asarray(counts, dtype=np.float64)
    mean = c.mean(axis=-1, keepdims=True) if c.size else np.ones(c.shape[:-1] + (1,))
    return np.divide(c, mean, out=np.full_like(c, np.nan), where=mean > 0)


def load_scale(ratio: np.ndarray) -> Scale:
    """Load relative to balanced, diverging around 1×: 0 (starved) … 1× … max(2×, data max) (hot)."""
    lo, hi = data_range(ratio)
    top = max(2.0, hi) if math.isfinite(hi) else 2.0
    return Scale(lo=0.0, hi=top, centre=1.0, data_lo=lo, data_hi=hi, alarm="both",
                 label=f"load {_span(lo, hi, '.2f')}× balanced (0 starved … 1× … {top:.3g}× hot)",
                 short=f"× balanced, 0 … 1 … {top:.3g}")
