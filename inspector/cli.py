"""The `inspector` command: the one place that wires the layers together.

Subcommands: `ls`, `info`, `export`, `summary`, `explain`, `demo`, `dash`, `replay`, `tui`. Errors about runs are one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from inspector import __version__
from inspector.cli_format import count, human_age, human_bytes, parse_steps, safe
from inspector.schema.run_meta import printable
from inspector.store.errors import RunError


def _cmd_ls(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from inspector.store.discovery import find_runs
    from inspector.store.reader import RunReader

    root = Path(args.root)
    if not root.exists():
        raise RunError(f"{root}: no such directory")
    runs = find_runs(root)
    table = Table(title=f"runs under {root}", title_justify="left")
    for col, justify in [("run", "left"), ("name", "left"), ("status", "left"), ("step", "right"),
                         ("ranks", "right"), ("size", "right"), ("updated", "right")]:
        table.add_column(col, justify=justify)
    colours = {"live": "green", "finished": "blue", "crashed": "red", "damaged": "red", "failed": "red",
               "empty": "yellow"}
    for path in runs:
        rel = str(path.relative_to(root)) if path != root else str(path)
        try:
            with _quiet_warnings():
                reader = RunReader(path)
            status = reader.status()
            updated = max((reader.last_update(r) for r in reader.ranks), default=0.0)
            table.add_row(safe(rel), safe(reader.meta.name, 60), f"[{colours.get(status, 'white')}]{status}[/]",
                          str(max(reader.last_step(), 0)), f"{len(reader.ranks)}/{reader.meta.world_size}",
                          human_bytes(reader.size_bytes()), human_age(time.time() - updated) if updated else "-")
            reader.close()
        except Exception as exc:  # noqa: BLE001 - one bad run must not hide the others
            reason = str(exc).split(": ", 1)[-1] if isinstance(exc, RunError) else f"{type(exc).__name__}: {exc}"
            table.add_row(safe(rel), "-", "[red]unreadable[/]", "-", "-", "-", safe(reason, 60))
    Console().print(table if runs else f"no runs under {root}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from inspector.store.kind_names import FALLBACK, RECORDED, kind_summaries
    from inspector.store.reader import RunReader

    _load_plugin_kinds()
    with _quiet_warnings():
        reader = RunReader(args.run)
    meta, con = reader.meta, Console()
    con.print(f"[bold]{safe(meta.name)}[/]  {safe(reader.path, 400)}")
    con.print(f"status {reader.status()} · format v{meta.format_version} · world size {meta.world_size} · "
              f"created {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(meta.created))} · "
              f"{human_bytes(reader.size_bytes())}")
    if meta.model:
        con.print(f"model {safe(meta.model.get('class', '?'), 80)} · {count(meta.model.get('parameters', '?'))} "
                  "parameters")
    ranks = Table(title="ranks", title_justify="left")
    for col in ("rank", "host", "status", "last step", "dropped"):
        ranks.add_column(col)
    for r in reader.ranks:
        info, closed = reader.rank_info(r), reader.closed_info(r)
        status = reader.rank_status(r)
        if status == "failed":
            status += f": {safe(reader.failure(r), 80)}"
        ranks.add_row(str(r), safe(info.get("host", "?"), 64), status, str(reader.last_step(r)),
                      count(closed.get("dropped", "?")) if closed else "-")
    con.print(ranks)
    with _quiet_warnings():
        summaries = kind_summaries(reader)
    notes = {RECORDED: "named by the run (plugin not installed here)",
             FALLBACK: "the run records no name for this kind id"}
    kinds = Table(title="record kinds", title_justify="left")
    columns = ["kind", "frames", "first step", "last step"]
    noted = any(s.kind.source in notes for s in summaries)
    for col in columns + (["note"] if noted else []):
        kinds.add_column(col)
    for s in summaries:
        extra = [notes.get(s.kind.source, "")] if noted else []
        kinds.add_row(safe(s.kind.name), str(s.frames), str(s.step_min), str(s.step_max), *extra)
    con.print(kinds)
    for problem in reader.problems:
        con.print(f"[yellow]warning:[/] {safe(problem, 600)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from inspector.store.export import export_run
    from inspector.store.reader import RunReader

    _load_plugin_kinds()
    with _quiet_warnings():
        reader = RunReader(args.run)
    if args.format == "eplb":
        from inspector.views.eplb import export_eplb

        files = export_eplb(reader, args.out, steps=parse_steps(args.steps))
        for f in files:
            print(printable(str(f), 600))
        notes = [] if files else ["no inference expert load in this run (record it with watch(mode='inference'))"]
    elif args.format == "tensorboard":
        from inspector.store.tensorboard_export import export_tensorboard

        files = export_tensorboard(reader, args.out, steps=parse_steps(args.steps))
        for f in files:
            print(printable(str(f), 600))
        notes = []
    else:
        with _quiet_warnings():
            report = export_run(reader, args.out, args.format, kinds=args.kind, steps=parse_steps(args.steps))
        files, notes = report.files, report.notes
        for line in report.describe():
            print(printable(line, 600))
    for note in notes:
        print(f"warning: {printable(note, 600)}", file=sys.stderr)
    for problem in reader.problems:
        print(f"warning: {printable(problem, 600)}", file=sys.stderr)
    if not files:
        print(f"{printable(str(args.run), 600)}: nothing to export", file=sys.stderr)
    return 0


def _load_plugin_kinds() -> None:
    """Register the installed plugins' record kinds, so their runs' kinds are read with their schemas
    (a plugin that fails is skipped quietly here: `inspector plugins` says why)."""
    from inspector.plugins import load_plugins

    with _quiet_warnings():
        load_plugins()


def _cmd_summary(args: argparse.Namespace) -> int:
    from rich.console import Console

    from inspector.summary_report import print_summary
    from inspector.views.live import TABULAR_KINDS, LiveRun
    from inspector.views.summary import run_summary

    run = LiveRun(args.run, kinds=TABULAR_KINDS)     # every kind read: damage anywhere is reported
    print_summary(run_summary(run), Console(width=args.width))
    for problem in run.reader.problems:
        print(f"warning: {printable(problem, 600)}", file=sys.stderr)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from rich.console import Console

    from inspector.explain_report import explanation_json, print_explanation
    from inspector.views.explain import explain, spike_steps
    from inspector.views.live import LiveRun

    run = LiveRun(args.run)
    step = args.step
    if step is None:
        spikes = spike_steps(run)
        if not spikes:
            raise RunError(f"{args.run}: no loss spike or non-finite loss recorded; name a step with --step N")
        step = spikes[0]
    if not 0 <= step <= max(run.last_step(), 0):
        raise RunError(f"{args.run}: step {step} is outside the run (steps 0–{max(run.last_step(), 0)})")
    e = explain(run, step, rank=args.rank, lookback=args.lookback, baseline=args.baseline)
    if args.json:
        print(explanation_json(e))
    else:
        print_explanation(e, Console(width=args.width))
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    import warnings

    from rich.console import Console
    from rich.table import Table

    from inspector.plugins import PluginWarning, load_plugins

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)   # failures are shown in the table instead
        registry = load_plugins()
    table = Table(title="plugins (entry-point group inspector.plugins)", title_justify="left")
    for col in ("plugin", "status", "from", "provides"):
        table.add_column(col, overflow="fold")
    for p in registry.plugins:
        status = "[green]loaded[/]" if p.ok else f"[red]skipped[/]: {p.error}"
        table.add_row(p.name, status, p.source, ", ".join(p.provides) or "-")
    Console().print(table if registry.plugins else "no plugins installed")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from inspector.demo import run_demo

    return run_demo(config=args.config, steps=args.steps, out=args.out, seed=args.seed, ranks=args.ranks,
                    slow_rank=args.slow_rank, probes=args.probes, batch_size=args.batch_size,
                    seq_len=args.seq_len, progress=not args.no_progress, dash=not args.no_dash, port=args.port,
                    open_browser=not args.no_browser)


def _cmd_dash(args: argparse.Namespace) -> int:
    from inspector.dash_app.server import serve

    path = Path(args.path)
    if getattr(args, "replay", False):
        from inspector.store.reader import RunReader

        with _quiet_warnings():
            RunReader(path).close()        # a replay needs a readable run: one-line error otherwise
    elif not path.exists():
        raise RunError(f"{path}: no such directory")
    serve(path, host=args.host, port=args.port, token=args.token, open_browser=not args.no_browser)
    return 0


def _cmd_tui(args: argparse.Namespace) -> int:
    from inspector.tui.app import run_tui
    from inspector.tui.target import resolve_target

    return run_tui(resolve_target(args.run), interval=args.interval, screen=args.screen)


def _add_generate_arguments(p: argparse.ArgumentParser) -> None:
    from inspector.generate_demo import add_arguments

    add_arguments(p)


def _cmd_generate(args: argparse.Namespace) -> int:
    from inspector.generate_demo import run

    return run(args)


class _quiet_warnings:
    """Run warnings are shown by the commands themselves, as one line each."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `inspector` command."""
    p = argparse.ArgumentParser(prog="inspector", description="DeepSeek Inspector: record, inspect and replay "
                                "PyTorch training runs.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = sub.add_parser("ls", help="list the runs under a directory")
    ls.add_argument("root", nargs="?", default="runs", help="directory to search (default: runs)")
    ls.set_defaults(func=_cmd_ls)

    info = sub.add_parser("info", help="show one run: metadata, ranks, record kinds, problems")
    info.add_argument("run")
    info.set_defaults(func=_cmd_info)

    ex = sub.add_parser("export", help="export a run's records as Parquet or CSV (one file per kind), as "
                        "TensorBoard event files (scalars and histograms, one TensorBoard run per rank) or as "
                        "EPLB expert-load matrices [layers x experts] of inference (eplb_prefill/decode/all.npy)")
    ex.add_argument("run")
    ex.add_argument("--format", choices=["parquet", "csv", "tensorboard", "eplb"], default="parquet")
    ex.add_argument("--out", required=True, help="output directory")
    ex.add_argument("--kind", action="append", help="only this record kind (repeatable)")
    ex.add_argument("--steps", help="step range FIRST:LAST (either may be empty)")
    ex.set_defaults(func=_cmd_export)

    sm = sub.add_parser("summary", help="post-mortem report: anomalies, first non-finite value, expert balance, "
                        "slowest modules, stragglers")
    sm.add_argument("run")
    sm.add_argument("--width", type=int, default=None, help="console width (default: the terminal's)")
    sm.set_defaults(func=_cmd_summary)

    xp = sub.add_parser("explain", help="a loss spike's root cause: the signals that left their own baseline "
                        "first before the step, ranked; the batch and whether the step can be replayed")
    xp.add_argument("run")
    xp.add_argument("--step", type=int, default=None, help="the step to explain (default: the first loss spike)")
    xp.add_argument("--rank", type=int, default=None, help="the rank judged (default: the lowest whose loss spiked at the step, else the lowest)")
    xp.add_argument("--lookback", type=int, default=10, help="steps up to the spike searched (default 10)")
    xp.add_argument("--baseline", type=int, default=40, help="steps before those forming each baseline (default 40)")
    xp.add_argument("--json", action="store_true", help="print JSON instead of tables")
    xp.add_argument("--width", type=int, default=None, help="console width (default: the terminal's)")
    xp.set_defaults(func=_cmd_explain)

    pl = sub.add_parser("plugins", help="list the plugins that loaded (and those skipped, with why)")
    pl.set_defaults(func=_cmd_plugins)

    demo = sub.add_parser("demo", help="train the built-in DeepSeek-style engine with the recorder on")
    demo.add_argument("--config", default="tiny", help="engine config (debug, tiny, small)")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--out", default=None, help="run directory (default: runs/demo-<time>)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--ranks", type=int, default=1, help="train on N processes under torchrun (gloo on CPU)")
    demo.add_argument("--slow-rank", type=int, default=None, help="delay this rank to show straggler detection")
    demo.add_argument("--probes", default="default", help="probe set: default, all or none")
    demo.add_argument("--batch-size", type=int, default=None)
    demo.add_argument("--seq-len", type=int, default=None)
    demo.add_argument("--no-progress", action="store_true", help="no progress bar (for scripts)")
    demo.add_argument("--no-dash", action="store_true", help="do not serve the dashboard (for scripts and tests)")
    demo.add_argument("--no-browser", action="store_true", help="serve the dashboard but do not open a browser")
    demo.add_argument("--port", type=int, default=8050, help="dashboard port on 127.0.0.1 (default 8050)")
    demo.set_defaults(func=_cmd_demo)

    gen = sub.add_parser("generate", help="serve prompts with the built-in engine's batching scheduler; "
                         "--inspect RUN_DIR records it in inference mode")
    _add_generate_arguments(gen)
    gen.set_defaults(func=_cmd_generate)

    for name, helptext, argname in [("dash", "serve the web dashboard over a run or every run under a directory",
                                     "RUN_OR_ROOT"), ("replay", "open the web dashboard on a finished run", "RUN")]:
        d = sub.add_parser(name, help=helptext)
        d.add_argument("path", metavar=argname)
        d.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
        d.add_argument("--port", type=int, default=8050)
        d.add_argument("--token", default=None, help="secret the browser must present (?token=, cookie or "
                       "Authorization: Bearer); required off loopback")
        d.add_argument("--no-browser", action="store_true", help="do not open a browser")
        d.set_defaults(func=_cmd_dash, replay=name == "replay")

    tui = sub.add_parser("tui", help="terminal UI: live monitor of every rank, or replay of a finished run")
    tui.add_argument("run", metavar="RUN_OR_ROOT", help="a run directory, or a directory of runs (newest is shown)")
    tui.add_argument("--interval", type=float, default=0.5, help="seconds between polls of a live run")
    tui.add_argument("--screen", choices=["ranks", "run", "attention", "experts", "inference", "hang"], default="ranks")
    tui.set_defaults(func=_cmd_tui)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `inspector` console script."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RunError as exc:
        print(f"inspector: error: {printable(str(exc), 600)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"inspector: error: {printable(str(exc), 600)}", file=sys.stderr)
        return 2
    except OSError as exc:      # e.g. `export --out` somewhere unwritable
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"inspector: error: {printable(where + (exc.strerror or str(exc)), 600)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
