"""Benchmark the terminal UI: start-up to first frame, and CPU per second idle and following a live run.

Budgets (issue #6): first frame <= 1 s; idle with 64 ranks <= 10 % of one core. Each figure is
printed next to a baseline measured in the same run: a bare Textual `App` holding one `Static`
(the cost of Textual itself on this machine), with the ratio.

Every measurement is a fresh process (so start-up includes the interpreter and every import):

1. start-up: wall time from `Popen` to the first frame that shows data (the app's `on_first_frame`
   hook, called after the first snapshot was drawn) on a finished 64-rank run; baseline: bare App
   to its first refresh. Median of `--repeat` runs.
2. idle CPU/s: process CPU time (all threads) over `--seconds` after the first frame, on
   (a) the finished 64-rank run (nothing left to poll) and (b) a live 64-rank run whose writers are
   alive but quiet (polled every 0.5 s, nothing new); baseline: the bare App idling.
3. following CPU/s: the same on a 64-rank run that a separate writer process is appending to at
   `--rate` steps/s per rank (scalars, timing, system samples: what the Ranks screen reads).

The UI runs headless (`App.run(headless=True)`, 160x50): it lays out and renders every frame, only
the bytes to a terminal are skipped. The writer's CPU is not counted (another process).

    .venv/bin/python benchmarks/tui_bench.py [--ranks 64] [--seconds 5] [--rate 5] [--repeat 3]

With `--hang N` it measures the hang verdict's cost instead (issue 15): first frame and idle CPU/s of
the TUI (Ranks screen, its HANG banner computed by the poller) on a hung N-rank run, as a ratio to
the same on a hung 4-rank run. Both runs hold a few steps of records (the writer above) and every
rank's heartbeat.json and stack dump (rank 1 of 4, or N/2+5 of N, stuck in its data loader, the
others waiting in all_reduce #42: `tests/views/test_hang_runs.py`); a separate process rewrites every
heartbeat once a second, as live watchdogs do, so the UI re-reads them all the time.
`--hang-base DIR` reuses an N-rank run already written by the records writer (writing 1,024
Recorders' files takes minutes on a busy machine).

    .venv/bin/python benchmarks/tui_bench.py --hang 1024 [--hang-base DIR] [--seconds 5] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE = (160, 50)


def write_steps(path: Path, ranks: int, steps: int, *, rate: float = 0.0, hold: float = 0.0) -> None:
    """The synthetic multi-rank writer of the TUI tests (scalars, timing, system samples)."""
    sys.path.insert(0, str(ROOT))
    from tests.tui.many_ranks import write_many_ranks

    write_many_ranks(path, ranks, steps, rate=rate, hold=hold)


def rewrite_heartbeats(path: Path, ranks: int, period: float = 1.0) -> None:
    """Rewrite every rank's heartbeat (the "data" hang) every `period` s against the clock, forever."""
    sys.path.insert(0, str(ROOT))
    from tests.views.test_hang_runs import write_hang_run

    while True:
        t = time.monotonic()
        write_hang_run(path, "data", ranks, now=time.time(), dumps=False)
        time.sleep(max(0.0, period - (time.monotonic() - t)))


def hang_bench(a: argparse.Namespace) -> None:
    """First frame and idle CPU/s on a hung `a.hang`-rank run, as ratios to a hung 4-rank run."""
    import shutil

    sys.path.insert(0, str(ROOT))
    from tests.views.test_hang_runs import write_hang_run

    results = {}
    with tempfile.TemporaryDirectory(prefix="tui-hang-bench-") as tmp:
        tmp = Path(tmp)
        for ranks, beats in ((4, True), (a.hang, False), (a.hang, True)):
            path = tmp / f"hang{ranks}-{beats}"
            t = time.perf_counter()
            if ranks == a.hang and a.hang_base:
                shutil.copytree(a.hang_base, path)
            else:
                write_steps(path, ranks, 10)
            for closed in path.glob("rank-*/closed.json"):   # a hung job never closed
                closed.unlink()
            if beats:
                write_hang_run(path, "data", ranks, now=time.time())
            print(f"wrote a {'hung ' if beats else ''}{ranks}-rank run in {time.perf_counter() - t:.1f} s"
                  f"{'' if beats else ' (no heartbeats: the records alone)'}")
            rewriter = subprocess.Popen([sys.executable, __file__, "--rewriter", json.dumps([str(path), ranks])],
                                        cwd=ROOT, start_new_session=True) if beats else None
            try:
                time.sleep(2.0)
                first = [run_child("tui", str(path))["startup_s"] for _ in range(a.repeat)]
                idle = run_child("tui", str(path), a.seconds)
            finally:
                if rewriter is not None:
                    rewriter.kill()
                    rewriter.wait()
            results[ranks, beats] = (statistics.median(first), first, idle)
    print(f"\nTUI hang benchmark: runs left open (no closed.json), heartbeats rewritten every second, headless "
          f"{SIZE[0]}x{SIZE[1]}, CPU over {a.seconds:g} s, {os.cpu_count()} cores (shared)")
    base_first, _, base_idle = results[4, True]
    print(f"{'run':40} {'first frame s':>13} {'ratio':>7} {'idle CPU/s':>11} {'ratio':>7}  notes")
    for (ranks, beats), (first, runs, idle) in results.items():
        name = f"{ranks} ranks, " + ("hung (banner)" if beats else "no heartbeats")
        cpu = idle["cpu_per_s"]
        print(f"{name:40} {first:13.2f} {first / base_first:6.2f}x {cpu:11.3f} "
              f"{cpu / max(base_idle['cpu_per_s'], 1e-6):6.2f}x  first frames {', '.join(f'{x:.2f}' for x in runs)}; "
              f"{idle['draws']} draws")


def child(mode: str, target: str, seconds: float) -> None:
    """Run one app in this process and print a JSON line of what was measured."""
    first: dict[str, float] = {}
    timers: list = []

    def measure(app) -> None:
        first["t"] = time.time()
        first["cpu"] = time.process_time()
        if mode == "bare":
            idle_window(app) if seconds > 0 else app.exit()
            return
        timers.append(app.set_interval(0.02, lambda: _full(app)))   # then the frame drawn from the records
        app.set_timer(90.0 + seconds, app.exit)

    def idle_window(app) -> None:
        """CPU over `seconds`, from 1 s after the frame (the full one for the app: the roll call's
        frame is followed by the work of scoring the ranks, which is not idling)."""
        app.set_timer(1.0, lambda: first.update(cpu1=time.process_time(), t1=time.monotonic()))
        app.set_timer(1.0 + seconds, app.exit)

    def _full(app) -> None:
        if "full" not in first and app.settled:
            first["full"] = time.time()
            timers.pop().stop()
            idle_window(app) if seconds > 0 else app.exit()

    if mode == "bare":
        from textual.app import App
        from textual.widgets import Static

        class Bare(App):
            """The baseline: a Textual App holding one Static."""

            def compose(self):
                yield Static("hello")

            def on_mount(self) -> None:
                self.call_after_refresh(measure, self)

        app = Bare()
    else:
        sys.path.insert(0, str(ROOT))
        from inspector.tui.app import InspectorApp

        holder: list = []
        app = InspectorApp(target, on_first_frame=lambda: measure(holder[0]))
        holder.append(app)
    app.run(headless=True, size=SIZE)
    out = {"first_frame_at": first.get("t"), "full_frame_at": first.get("full")}
    if "cpu1" in first:
        out["cpu_per_s"] = (time.process_time() - first["cpu1"]) / (time.monotonic() - first["t1"])
    if mode != "bare":
        out["draws"] = app.draws
    print(json.dumps(out))


def run_child(mode: str, target: str = "", seconds: float = 0.0) -> dict:
    """Start a child process, return its measurements plus the start-up time seen from here.

    The child may cache compiled bytecode (`PYTHONDONTWRITEBYTECODE` is dropped from its
    environment), as any user's Python does: with it set, as on some CI images, every start would
    compile the Inspector's modules from source while Textual's came precompiled from pip."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--target", target, "--seconds", str(seconds)],
                          capture_output=True, text=True, timeout=120 + seconds, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["startup_s"] = result["first_frame_at"] - t0
    if result.get("full_frame_at"):
        result["full_s"] = result["full_frame_at"] - t0
    return result


def main() -> None:
    """Parse arguments, build the runs, measure, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300, help="steps in the finished run")
    ap.add_argument("--seconds", type=float, default=5.0, help="CPU measurement window")
    ap.add_argument("--rate", type=float, default=5.0, help="steps/s per rank of the live writer")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--target", default="", help=argparse.SUPPRESS)
    ap.add_argument("--writer", help=argparse.SUPPRESS)
    ap.add_argument("--hang", type=int, default=0, help="measure the hang banner on a hung run of this many ranks")
    ap.add_argument("--hang-base", help="an N-rank run of records to reuse for --hang (copied)")
    ap.add_argument("--rewriter", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rewriter:
        path, ranks = json.loads(a.rewriter)
        rewrite_heartbeats(Path(path), int(ranks))
        return
    if a.hang:
        hang_bench(a)
        return
    if a.child:
        child(a.child, a.target, a.seconds)
        return
    if a.writer:
        spec = json.loads(a.writer)
        write_steps(Path(spec["path"]), spec["ranks"], spec["steps"], rate=spec["rate"], hold=spec["hold"])
        return

    with tempfile.TemporaryDirectory(prefix="tui-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        write_steps(tmp / "finished", a.ranks, a.steps)
        print(f"wrote a finished {a.ranks}-rank run of {a.steps} steps in {time.perf_counter() - t:.1f} s")

        bare = [run_child("bare")["startup_s"] for _ in range(a.repeat)]
        tui = [run_child("tui", str(tmp / "finished"))["startup_s"] for _ in range(a.repeat)]
        bare_idle = run_child("bare", seconds=a.seconds)
        idle = run_child("tui", str(tmp / "finished"), a.seconds)

        def start_writer(name: str, steps: int, rate: float, hold: float) -> subprocess.Popen:
            spec = json.dumps({"path": str(tmp / name), "ranks": a.ranks, "steps": steps, "rate": rate, "hold": hold})
            proc = subprocess.Popen([sys.executable, __file__, "--writer", spec], cwd=ROOT)
            deadline = time.monotonic() + 60
            while not (tmp / name / "run.json").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return proc

        quiet_writer = start_writer("quiet", 50, 0.0, hold=a.seconds + 15)
        time.sleep(2.0)
        quiet = run_child("tui", str(tmp / "quiet"), a.seconds)
        quiet_writer.kill()
        quiet_writer.wait()

        live_writer = start_writer("live", int(a.rate * (a.seconds + 30)), a.rate, hold=0.0)
        time.sleep(1.0)
        follow = run_child("tui", str(tmp / "live"), a.seconds)
        live_writer.kill()
        live_writer.wait()

    med_bare, med_tui = statistics.median(bare), statistics.median(tui)
    base_cpu = max(bare_idle["cpu_per_s"], 1e-6)
    rows = [
        ("start-up to first frame (s)", med_tui, med_bare, 1.0, f"{', '.join(f'{x:.2f}' for x in tui)}"),
        (f"idle CPU/s, finished {a.ranks}-rank run", idle["cpu_per_s"], base_cpu, 0.10, f"{idle['draws']} draws"),
        (f"idle CPU/s, live quiet {a.ranks}-rank run", quiet["cpu_per_s"], base_cpu, 0.10, f"{quiet['draws']} draws"),
        (f"CPU/s following {a.ranks} ranks at {a.rate:g} steps/s", follow["cpu_per_s"], base_cpu, None,
         f"{follow['draws']} draws"),
    ]
    print(f"\nTUI benchmark: {a.ranks} ranks, headless {SIZE[0]}x{SIZE[1]}, CPU over {a.seconds:g} s, "
          f"{os.cpu_count()} cores (shared)")
    print(f"{'measure':44} {'TUI':>8} {'bare App':>9} {'ratio':>7} {'budget':>7}  ok   notes")
    for name, value, base, budget, note in rows:
        ok = "-" if budget is None else ("yes" if value <= budget else "NO")
        print(f"{name:44} {value:8.3f} {base:9.3f} {value / base:6.1f}x {budget if budget else '-':>7}  {ok:4} {note}")


if __name__ == "__main__":
    main()
