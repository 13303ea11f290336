"""`inspector summary RUN`: the post-mortem report printed with rich (data from `views.summary`)."""
from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from inspector.cli_format import human_bytes, safe
from inspector.views.hang import HangVerdict, rank_list, stuck_table
from inspector.views.inference import InferenceSummary
from inspector.views.inference_cost import cost_text
from inspector.views.summary import CPU_WAIT_SAID, CollapsedHead, RunSummary


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _head_state(h: CollapsedHead) -> str:
    """"L1·H2 (from step 50, still collapsed at step 120)" or "… (steps 50–80, recovered by step 120)"."""
    label = f"L{h.layer}·H{h.head}"
    if h.still_collapsed:
        again = f", again since step {h.since}" if h.since != h.first_step else ""
        return f"{label} (from step {h.first_step}{again}, still collapsed at step {h.last_sampled})"
    return f"{label} (steps {h.first_step}–{h.last_flagged}, recovered by step {h.last_sampled})"


def print_hang(v: HangVerdict, con: Console) -> None:
    """The HANG section: headline, desynchronised collectives, the stuck-ranks table, the named ranks'
    frames (the user's first, then the innermost one)."""
    con.print(f"[bold white on red] HANG [/] [bold red]{safe(v.headline, 600)}[/]")
    for d in v.desyncs:
        if d.line() not in v.headline:
            con.print(f"  [red]desynchronised:[/] {safe(d.line(), 400)}")
    if v.silent:
        con.print(f"  [red]no heartbeat at all from {'rank' if len(v.silent) == 1 else 'ranks'} "
                  f"{rank_list(v.silent)}[/] (never started, or no watchdog)")
    table = Table(title=f"stuck ranks ({len(v.stuck)} of {v.world_size})", title_justify="left",
                  title_style="bold red")
    for col in ("rank", "state", "step", "phase", "module", "collective", "stalled", "host:pid", "where"):
        table.add_column(col, overflow="fold")
    for row in stuck_table(v):
        table.add_row(rank_list(row.ranks, limit=6), row.state, str(row.step), row.phase, safe(row.module, 80),
                      safe(row.collective, 80), row.stalled_text, safe(row.host, 60), safe(row.where, 80),
                      style="bold" if row.named else None)
    con.print(table)
    for s in v.named:
        if not s.frames and s.innermost is None:
            if s.stuck:
                con.print(f"  rank {s.rank}: no stack dump"
                          + (" (it stopped before its watchdog saw a stall)" if s.state == "stopped reporting" else ""))
            continue
        when = f", written {time.strftime('%H:%M:%S', time.gmtime(s.dump_time))} UTC" if s.dump_time else ""
        con.print(f"  [bold]rank {s.rank}[/] main thread ({safe(s.dump, 60)}{when}), most recent call first:")
        for f in s.frames:
            con.print(f"    [bold]{safe(f.where, 100)}[/] in {safe(f.function, 80)}  [dim]{safe(f.file, 200)}[/]")
        if s.innermost is not None:
            f = s.innermost
            con.print(f"    innermost: {safe(f.where, 100)} in {safe(f.function, 80)}  [dim]{safe(f.file, 200)}[/]")
    if v.processes_gone:
        con.print(f"  [red]the processes are gone:[/] last heartbeat "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(v.last_heartbeat))} UTC; this is their last state")
    for p in v.problems:
        con.print(f"  [yellow]{safe(p, 300)}[/]")


def _bytes(n: float) -> str:
    return human_bytes(n) if n == n else "N/A"


def print_inference(s: InferenceSummary, con: Console) -> None:
    """The inference section: latency percentiles, throughput by stage, cache peak, expert imbalance by stage."""
    t = s.totals
    reasons = ", ".join(f"{n} {safe(k, 20)}" for k, n in sorted(s.finished.items())) or "none finished"
    con.print(f"[bold]inference:[/] {t.requests} requests ({reasons}) in {t.iterations} iterations · "
              f"{t.prompt_tokens:,} prompt tokens, {t.generation_tokens:,} generated · "
              f"{_fmt(t.generation_tokens_per_s, ',.1f')} generated tokens/s over {_fmt(t.wall_s, '.2f')} s")
    con.print(f"  prefill {_fmt(t.prefill_s, '.2f')} s ({_fmt(t.prefill_tokens_per_s, ',.0f')} prompt tokens/s) · "
              f"decode {_fmt(t.decode_s, '.2f')} s ({_fmt(t.decode_tokens_per_s, ',.1f')} tokens/s) · "
              f"peak batch {t.peak_batch} · KV cache peak {_bytes(t.peak_kv_cache_bytes)} "
              f"(decompressed would be {_bytes(t.peak_kv_cache_decompressed_bytes)}), "
              f"usage {_fmt(t.peak_kv_cache_usage * 100 if t.peak_kv_cache_usage == t.peak_kv_cache_usage else None, '.1f')}%")
    table = Table(title="request latency (ms)", title_justify="left")
    for col in s.latency.columns:
        table.add_column(str(col), justify="left" if col == "metric" else "right")
    for row in s.latency.itertuples(index=False):
        table.add_row(str(row[0]), str(row[1]), *(_fmt(v, ",.1f") for v in row[2:]))
    con.print(table)
    if s.sampled:
        con.print(f"  the Inspector's own sampled work: {cost_text(s.sampled)}; included in the latencies above")
    if not s.slowest.empty:
        slow = ", ".join(f"#{int(r.request_id)} ({_fmt(r.e2e_request_latency_s * 1e3, ',.0f')} ms, "
                         f"queued {_fmt(r.queue_time_s * 1e3 if r.queue_time_s == r.queue_time_s else None, ',.0f')} ms)"
                         for r in s.slowest.itertuples())
        con.print(f"  slowest requests (end to end): {slow}")
    if not s.imbalance.empty:
        table = Table(title="expert imbalance by stage (max/mean tokens per expert, whole run)", title_justify="left")
        table.add_column("layer")
        stages = [c for c in ("prefill", "decode") if c in s.imbalance.columns]
        for st in stages:
            table.add_column(f"{st} max/mean", justify="right")
            table.add_column(f"{st} hottest expert", justify="right")
        for row in s.imbalance.to_dict("records"):
            cells = []
            for st in stages:
                cells += [_fmt(row[st], ".2f"), "-" if row[f"{st}_hot"] != row[f"{st}_hot"] else str(int(row[f"{st}_hot"]))]
            table.add_row(str(int(row["layer"])), *cells)
        con.print(table)


def print_summary(summary: RunSummary, console: Console | None = None) -> None:
    """Print `summary` as a few titled tables; sections with nothing to say print one line."""
    con = console or Console()
    if summary.inference is not None and summary.loss_last is None:
        con.print(f"[bold]{safe(summary.name)}[/] · {summary.status} · inference · {summary.steps} iterations · "
                  f"{summary.ranks} rank(s)")
    else:
        con.print(f"[bold]{safe(summary.name)}[/] · {summary.status} · {summary.steps} steps · {summary.ranks} rank(s) · "
                  f"loss {_fmt(summary.loss_first)} → {_fmt(summary.loss_last)} (best {_fmt(summary.loss_min)})")
    if summary.hang is not None:
        print_hang(summary.hang, con)

    if summary.inference is not None:
        print_inference(summary.inference, con)

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
                                                     "starved at the end (since step)", "hot at the end (since step)"):
            table.add_column(col)
        for e in summary.experts:
            starved = ", ".join(f"{x} ({e.starved_since[x]})" if x in e.starved_since else str(x)
                                for x in e.starved_experts) or "-"
            table.add_row(*((e.phase,) if phases else ()), str(e.layer), safe(e.name, 120),
                          f"{e.mean_imbalance:.2f}", f"{e.max_imbalance:.2f}",
                          str(e.worst_step), f"{e.last_imbalance:.2f}",
                          f"[red]{starved}[/]" if e.starved_experts else starved,
                          ", ".join(f"{x} ({since})" for x, since in sorted(e.hot_since.items())) or "-")
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
    cw = summary.cpu_wait
    if cw is not None and cw.share >= CPU_WAIT_SAID:
        over = f"median over {cw.ranks} ranks" if cw.ranks > 1 else "rank " + str(cw.worst_rank)
        most = f"; most: rank {cw.worst_rank}, {cw.worst_ms:.1f} ms" if cw.ranks > 1 else ""
        con.print(f"[bold yellow]CPU contention:[/] the training threads waited for a CPU another process held "
                  f"{cw.median_ms:.1f} ms a step ({over}; {cw.share:.0%} of a step){most}")
