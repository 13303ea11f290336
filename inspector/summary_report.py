"""`inspector summary RUN`: the post-mortem report printed with rich (data from `views.summary`)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from inspector.cli_format import safe
from inspector.views.summary import CollapsedHead, RunSummary


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _head_state(h: CollapsedHead) -> str:
    """"L1·H2 (from step 50, still collapsed at step 120)" or "… (steps 50–80, recovered by step 120)"."""
    label = f"L{h.layer}·H{h.head}"
    if h.still_collapsed:
        again = f", again since step {h.since}" if h.since != h.first_step else ""
        return f"{label} (from step {h.first_step}{again}, still collapsed at step {h.last_sampled})"
    return f"{label} (steps {h.first_step}–{h.last_flagged}, recovered by step {h.last_sampled})"


def print_summary(summary: RunSummary, console: Console | None = None) -> None:
    """Print `summary` as a few titled tables; sections with nothing to say print one line."""
    con = console or Console()
    con.print(f"[bold]{safe(summary.name)}[/] · {summary.status} · {summary.steps} steps · {summary.ranks} rank(s) · "
              f"loss {_fmt(summary.loss_first)} → {_fmt(summary.loss_last)} (best {_fmt(summary.loss_min)})")

    nf = summary.first_nonfinite
    if nf is not None:
        where = safe(nf.first_module, 120) if nf.first_module else "unknown module"
        con.print(f"[bold red]first non-finite value:[/] step {nf.first_step}, rank {nf.first_rank}, "
                  f"{where} ({safe(nf.kind, 40)}): {safe(nf.first_message, 300)}")
    else:
        con.print("no non-finite values recorded")

    if summary.anomalies:
        table = Table(title="anomalies (by first occurrence)", title_justify="left")
        for col in ("kind", "count", "first step", "rank", "module", "steps", "first message"):
            table.add_column(col, overflow="fold")
        for g in summary.anomalies:
            steps = ", ".join(map(str, g.steps[:6])) + (" …" if len(g.steps) > 6 else "")
            modules = safe(g.first_module, 120) + (f" (+{len(g.modules) - 1})" if len(g.modules) > 1 else "")
            table.add_row(safe(g.kind, 40), str(g.count), str(g.first_step), str(g.first_rank), modules or "-", steps,
                          safe(g.first_message, 300))
        con.print(table)
    else:
        con.print("no anomalies recorded")

    if summary.experts:
        table = Table(title="expert balance per MoE layer (imbalance = max/mean tokens)", title_justify="left")
        phases = len({e.phase for e in summary.experts}) > 1 or any(e.phase != "train" for e in summary.experts)
        for col in (("phase",) if phases else ()) + ("layer", "router", "mean", "worst", "at step", "last",
                                                     "starved at the end (since step)"):
            table.add_column(col)
        for e in summary.experts:
            starved = ", ".join(f"{x} ({e.starved_since[x]})" if x in e.starved_since else str(x)
                                for x in e.starved_experts) or "-"
            table.add_row(*((e.phase,) if phases else ()), str(e.layer), safe(e.name, 120),
                          f"{e.mean_imbalance:.2f}", f"{e.max_imbalance:.2f}",
                          str(e.worst_step), f"{e.last_imbalance:.2f}",
                          f"[red]{starved}[/]" if e.starved_experts else starved)
        con.print(table)
    else:
        con.print("no MoE expert load recorded")

    if summary.collapsed_heads:
        con.print(f"[yellow]collapsed attention heads:[/] {', '.join(map(_head_state, summary.collapsed_heads))}")

    if not summary.slowest.empty:
        table = Table(title="slowest modules (mean ms per step)", title_justify="left")
        for col in ("module", "phase", "ms"):
            table.add_column(col)
        for row in summary.slowest.itertuples():
            table.add_row(safe(row.name, 120), safe(row.phase, 20), f"{row.ms:.2f}")
        con.print(table)

    if summary.stragglers:
        labels = {"step_ms": "step time", "compute_ms": "compute time (forward + data + optimizer)"}
        for rank, measure, ms, median in summary.stragglers:
            con.print(f"[bold yellow]straggler:[/] rank {rank}: {labels[measure]} {ms:.1f} ms per step, "
                      f"{ms / median:.2f}× the median over ranks ({median:.1f} ms)")
    elif summary.ranks > 1:
        con.print("no straggler ranks")
