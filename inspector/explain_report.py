"""`inspector explain RUN --step N`: the ranked root-cause report printed with rich (data from
`views.explain`), or as JSON."""
from __future__ import annotations

import json
import math
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from inspector.cli_format import safe
from inspector.views.explain import Explanation, factor_text, headline, rank_note, z_text

MAX_ROWS = 20
"""Leads printed (the JSON has them all)."""


def print_explanation(e: Explanation, con: Console) -> None:
    """The report: the spike, the headline, the ranked table, the batch and whether it can be replayed."""
    con.print(f"[bold]explain step {e.step}[/] (rank {e.rank}{rank_note(e)})" + (f" · {safe(e.spike, 300)}" if e.spike else
                                                                                  " · no anomaly recorded at this step"))
    con.print(f"[bold red]{safe(headline(e), 400)}[/]")
    table = Table(title=f"signals that left their own baseline (steps {e.baseline[0]}–{e.baseline[1]}) in steps "
                        f"{e.window[0]}–{e.window[1]}, earliest first · {len(e.leads)} of {e.judged} series",
                  title_justify="left")
    for col, justify in (("#", "right"), ("signal", "left"), ("where", "left"), ("left at", "right"),
                         ("before spike", "right"), ("value", "right"), ("baseline", "right"),
                         ("× baseline", "right"), ("z", "right"), ("peak z", "right")):
        table.add_column(col, justify=justify)
    for i, lead in enumerate(e.leads[:MAX_ROWS], 1):
        table.add_row(str(i), lead.signal, safe(lead.subject or "-", 60), str(lead.left_at), str(lead.steps_before),
                      f"{lead.value:.4g}", f"{lead.baseline:.4g}", factor_text(lead.factor), z_text(lead.z), z_text(lead.peak_z))
    if e.leads:
        con.print(table)
    if len(e.leads) > MAX_ROWS:
        con.print(f"… and {len(e.leads) - MAX_ROWS} more (--json lists every one)")
    for lead in e.earlier[:MAX_ROWS]:
        what = f"{lead.signal} of {lead.subject}" if lead.subject else lead.signal
        con.print(f"[yellow]already off before step {e.window[0]}:[/] {safe(what, 120)} since step {lead.left_at} "
                  f"({factor_text(lead.factor)} its baseline), and the loss stayed healthy after it")
    if e.batch:
        prints = ", ".join(f"{fp:#018x}" for fp in (v & 0xFFFF_FFFF_FFFF_FFFF for v in e.batch))
        con.print(f"batch: {len(e.batch)} forward(s), {safe(e.batch_shapes, 120)}; fingerprint {prints} "
                  "(inspector.fingerprint(batch) on a replayed step must match)")
    else:
        con.print("batch: not recorded (the replay probe was off)")
    con.print("replay: generator states kept: inspector.restore_rng(run, step) before the step's data and forward"
              if e.rng_kept else "replay: no generator state kept for this step (kept only where an anomaly was "
                                 "reported, for the last 8 steps)")


def explanation_json(e: Explanation) -> str:
    """The explanation as JSON (non-finite numbers as strings)."""
    def clean(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    data = asdict(e)
    data["headline"] = headline(e)
    return json.dumps(clean(data), indent=2)
