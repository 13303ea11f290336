"""Experts screen: per-layer bars of tokens per expert (from 0), coloured by load relative to the
balanced mean (blue starved … white 1× … red hot), with each layer's imbalance and a ✖ under each
expert the experts probe's rule calls starved at the step."""
from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from inspector.tui.screens.base import InspectorScreen
from inspector.tui.state import ExpertsData, Snapshot
from inspector.tui.widgets.bars import column_bars
from inspector.tui.widgets.ramp import DIVERGING, hex_colour, ramp_rgb
from inspector.views.scales import Scale, load_ratio, load_scale

BAR_HEIGHT = 4
STARVED_STYLE = "bold #60a5fa"


def imbalance_style(imbalance: float) -> str:
    """Green when balanced, yellow above 1.5× the mean, red above 3×."""
    return "bold red" if imbalance > 3 else "bold yellow" if imbalance > 1.5 else "bold green"


def _with_gaps(counts: np.ndarray, width: int) -> np.ndarray:
    """Each count repeated `width - 1` times then a 0 (a blank column between experts), when width > 2."""
    if width <= 2:
        return counts.repeat(width)
    out = np.zeros((len(counts), width))
    out[:, : width - 1] = counts[:, None]
    return out.reshape(-1)


def starved_marks(starved: dict[int, int], n_exp: int, width: int) -> str:
    """A ruler-aligned row with ✖ under each starved expert's bar."""
    return "".join(("✖" if e in starved else " ").center(width - 1).ljust(width) if width > 2
                   else ("✖" if e in starved else " ").center(width) for e in range(n_exp))


def load_legend(scale: Scale) -> Text:
    """'colour: ██ 0 starved ██ 1× balanced ██ 2× hot · load 0.74–1.55× balanced (…)'."""
    text = Text("colour: ")
    for ratio, name in ((scale.lo, "0 starved"), (scale.centre, "1× balanced"), (scale.hi, f"{scale.hi:.3g}× hot")):
        text.append("██", style=hex_colour(ramp_rgb(scale.position(ratio), DIVERGING)))
        text.append(f" {name}  ")
    text.append(f"· {scale.label}", style="dim")
    return text


def coloured_bars(counts: np.ndarray, width: int, top: float, scale: Scale) -> Text:
    """`column_bars` of one layer's counts (from 0 to `top`), each expert's columns coloured by its
    load relative to the layer's balanced mean."""
    wide = _with_gaps(counts, width)
    bars = column_bars(wide, BAR_HEIGHT, top=top)
    colours = [hex_colour(ramp_rgb(p, DIVERGING)) for p in scale.position(load_ratio(counts))]
    line = len(wide) + 1
    for i in range(BAR_HEIGHT):
        for e, colour in enumerate(colours):
            start = i * line + e * width
            bars.stylize(colour, start, start + width)
    return bars


class ExpertsScreen(InspectorScreen):
    """MoE routing at the recorded step ≤ cursor (n/p: next/previous recorded step)."""

    NAME = "experts"
    PAYLOAD = ExpertsData
    BINDINGS = [Binding("n", "step(1)", "Recorded step", key_display="n/p"),
                Binding("p", "step(-1)", "Prev step", show=False)]

    def compose_body(self) -> ComposeResult:
        """A scrollable column of per-layer bar charts."""
        yield Static("", id="experts-title", classes="title")
        with VerticalScroll(id="experts-scroll"):
            yield Static("", id="experts-bars")

    def draw(self, payload: ExpertsData, snap: Snapshot) -> str | None:
        """One block per layer: title with imbalance, bars, expert index ruler."""
        title = self.query_one("#experts-title", Static)
        bars = self.query_one("#experts-bars", Static)
        if payload.step is None or payload.counts.size == 0:
            title.update("")
            bars.update("")
            return "no MoE expert load recorded in this run"
        n_exp = payload.counts.shape[1]
        width = max(1, min(6, (self.size.width - 12) // max(n_exp, 1)))
        imb = {int(r["layer"]): r for _, r in payload.imbalance.iterrows()}
        top = float(payload.counts.max())
        scale = load_scale(load_ratio(payload.counts))
        title.update(Text.assemble((f"step {payload.step:,}", "bold"),
                                   f" (record {payload.steps.index(payload.step) + 1}/{len(payload.steps)}) · "
                                   f"{len(payload.layers)} MoE layers × {n_exp} experts · tokens per expert, "
                                   f"bars from 0 to {top:,.0f}"))
        out = load_legend(scale)
        out.append("\n\n")
        for layer, counts in zip(payload.layers, payload.counts):
            row = imb.get(layer)
            out.append(f"layer {layer}", style="bold")
            if row is not None:
                out.append(f"  imbalance {row['imbalance']:.2f}", style=imbalance_style(float(row["imbalance"])))
                out.append(f"  cv {row['cv']:.2f}  router entropy {row['router_entropy']:.2f}"
                           f"  aux loss {row['aux_loss']:.3g}", style="dim")
            total = int(counts.sum())
            out.append(f"  max {int(counts.max()):,} · min {int(counts.min()):,} · {total:,} tokens\n")
            out.append_text(coloured_bars(counts, width, top, scale))
            out.append("\n")
            ruler = "".join(str(e % 10).center(width - 1).ljust(width) if width > 2 else str(e % 10).center(width) if width > 1 or e % 5 == 0 else " " for e in range(n_exp))
            out.append(ruler + "\n", style="dim")
            starved = payload.starved.get(layer, {})
            if starved:
                out.append(starved_marks(starved, n_exp, width) + "\n", style=STARVED_STYLE)
                out.append("✖ starved: " + ", ".join(f"expert {e} (no token since step {s:,})"
                                                     for e, s in sorted(starved.items())) + "\n", style=STARVED_STYLE)
            out.append("\n")
        bars.update(out)
        return None

    def action_step(self, delta: int) -> None:
        """Move the step cursor to the next/previous recorded step."""
        snap = self.inspector.snapshot
        p = snap.payload if snap is not None else None
        if isinstance(p, ExpertsData):
            self.jump_recorded(p.steps, delta)
