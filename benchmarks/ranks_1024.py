"""A 1,024-rank job on local disk (issue 17, part 3): how the read side holds up, against baselines
measured in the same run.

The run: `tests/tui/many_ranks.write_many_ranks` (scalars, timing rows and system samples of every
rank, the last rank 1.5x slower, 8 ranks per node: 128 hosts), `--steps` steps, finished. Figures:
- `inspector summary RUN`: wall time of the real command (budget 5 s);
- TUI first frame, headless 160x50, fresh process (`tui_bench.run_child`), against a bare Textual
  App's (budget 2x): the roll call (`inspector.views.roll_call`), drawn before pandas and the reader
  load; then when the scored rank table replaced it; its idle CPU per second on the finished run
  (budget 5 %);
- the dashboard's System page drawn in Chromium (rank table present) against a bare Dash page with
  one graph (budget 2x);
- the rank table's first rows: grouped by node, worst node first, sorted by straggler score.
- following a live 1,024-rank run at 1 step/s per rank: the TUI's CPU per second (budget 50 % of a
  core) while another process writes it (1,024 Recorders flushing every 2 s: at the default 0.2 s
  their 1,024 writer threads alone took most of this machine's 2 cores; the writer's CPU is not
  counted, but it competes for the cores, so the TUI's figure is if anything pessimistic).

    .venv/bin/python benchmarks/ranks_1024.py [--run DIR | --steps 40] [--repeats 3] [--seconds 5]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.dash_bench import page_vs_bare  # noqa: E402
from benchmarks.tui_bench import run_child  # noqa: E402

SYSTEM_DRAWN = ("() => document.querySelectorAll('#sys-ranks td[data-dash-column=\"rank\"]').length >= 64 && "
                "document.querySelector('#sys-ranks-count') !== null")
"""The System page's first page of the rank table drawn (64 ranks; all 1,024 are in the table)."""


def main() -> None:
    """Write (or reuse) the run, measure, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="an existing 1,024-rank run directory (else one is written)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="idle CPU window")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ranks-1024-") as tmp:
        run = Path(a.run) if a.run else Path(tmp) / "job"
        if not a.run:
            from tests.tui.many_ranks import write_many_ranks
            t0 = time.perf_counter()
            write_many_ranks(run, 1024, a.steps, ranks_per_node=8)
            print(f"wrote 1,024 ranks × {a.steps} steps in {time.perf_counter() - t0:.0f} s")
        exe = Path(sys.executable).with_name("inspector")
        summary = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            res = subprocess.run([str(exe), "summary", str(run), "--width", "160"], capture_output=True, text=True,
                                 timeout=600)
            summary.append(time.perf_counter() - t0)
            assert res.returncode == 0, res.stderr[-2000:]
        print(f"inspector summary: {statistics.median(summary):.2f} s (median of {a.repeats}; budget 5 s)")
        bare = [run_child("bare")["startup_s"] for _ in range(a.repeats)]
        runs = [run_child("app", str(run)) for _ in range(a.repeats)]
        app = [r["startup_s"] for r in runs]
        idle = run_child("app", str(run), a.seconds)
        ratio = statistics.median(app) / statistics.median(bare)
        print(f"TUI first frame (the roll call: every rank's host, closed step or heartbeat): "
              f"{statistics.median(app):.2f} s against a bare App's {statistics.median(bare):.2f} s = {ratio:.2f}× "
              f"(budget 2×); the scored rank table at {statistics.median(r['full_s'] for r in runs):.2f} s; "
              f"idle {idle.get('cpu_per_s', float('nan')) * 100:.1f} % of a core (budget 5 %)")
        follow = following(Path(tmp) / "live", a.seconds * 2)
        print(f"TUI following a live 1,024-rank run at 1 step/s per rank: {follow['cpu_per_s'] * 100:.0f} % of a "
              f"core (budget 50 %), {follow['draws']} draws; first frame {follow['startup_s']:.2f} s, scored table "
              f"{follow.get('full_s', float('nan')):.2f} s with the writer beside it")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        from inspector.dash_app import create_app
        dash = create_app(run, poll_s=60)
        page_t, base_t = page_vs_bare(dash, "/system", SYSTEM_DRAWN, a.repeats)
        dash.inspector_registry.close()
        med, base = statistics.median(page_t), statistics.median(base_t)
        print(f"System page drawn (the rank table's first 64 of 1,024 ranks): {med:.2f} s against a bare Dash page's {base:.2f} s = "
              f"{med / base:.2f}× (budget 2×)")
        from inspector.views.live import LiveRun
        from inspector.views.ranks import by_node, rank_table
        shown = by_node(rank_table(LiveRun(run)))
        print("rank table, first rows:", ", ".join(f"rank {r} ({n}, holds the step up {s:.0f} ms)" for r, n, s in
                                                   shown[["rank", "node", "straggler_score"]].head(4).itertuples(index=False)))


def following(path: Path, seconds: float) -> dict:
    """`run_child` of the TUI on a 1,024-rank run another process writes at 1 step/s per rank."""
    code = ("import sys; sys.path.insert(0, '.'); from tests.tui.many_ranks import write_many_ranks; "
            f"write_many_ranks({str(path)!r}, 1024, {int(seconds) + 120}, rate=1.0, ranks_per_node=8, "
            "flush_interval=2.0)")
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not (path / "rank-01023").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(8.0)                  # a few steps of every rank on disk
        return run_child("app", str(path), seconds)
    finally:
        writer.kill()
        writer.wait()


if __name__ == "__main__":
    main()
