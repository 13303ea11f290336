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


def child(mode: str, target: str, seconds: float) -> None:
    """Run one app in this process and print a JSON line of what was measured."""
    first: dict[str, float] = {}

    def measure(app) -> None:
        first["t"] = time.time()
        first["cpu"] = time.process_time()
        if seconds <= 0:
            app.exit()
            return
        app.set_timer(1.0, lambda: first.update(cpu1=time.process_time(), t1=time.monotonic()))
        app.set_timer(1.0 + seconds, app.exit)

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
    out = {"first_frame_at": first.get("t")}
    if "cpu1" in first:
        out["cpu_per_s"] = (time.process_time() - first["cpu1"]) / (time.monotonic() - first["t1"])
    if mode != "bare":
        out["draws"] = app.draws
    print(json.dumps(out))


def run_child(mode: str, target: str = "", seconds: float = 0.0) -> dict:
    """Start a child process, return its measurements plus the start-up time seen from here."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--target", target, "--seconds", str(seconds)],
                          capture_output=True, text=True, timeout=120 + seconds, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["startup_s"] = result["first_frame_at"] - t0
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
    a = ap.parse_args()
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
