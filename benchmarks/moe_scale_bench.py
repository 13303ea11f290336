"""MoE at production size (issue 17): a 256-expert × 58-layer load matrix per sampled step, 100k steps.

Writes a run whose `expert_load` holds, every `--every` steps up to `--steps`, one chunk of 58 rows
(one per MoE layer) with 256 token counts each, through the real Recorder: one record batch per
sampled step, never a scalar per expert. Then, in Debian's Chromium, times navigation to the Experts
page until all four panels are drawn (tokens per expert at the step: 58 × 256; imbalance of every
layer over the run; one layer's share per expert over the run; the balance bias), against a bare Dash
page with one graph measured in the same run (`dash_bench.baseline_app`). Budget: the heatmap drawn
in ≤ 1 s, read as: from the moment the Dash app is up (its layout fetched, Dash's own scripts loaded;
`dash_bench.drawn_after_layout`), since a bare Dash page alone takes 1.5-2 s to start in this
Chromium. Also printed: write time, bytes on disk per sampled step, the server's first read, and the
server's time to compute the four panels (first draw, then another step).

    .venv/bin/python benchmarks/moe_scale_bench.py [--steps 100000 --every 10 --repeats 3] [--root DIR]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.dash_bench import baseline_app, drawn_after_layout, fmt, page_vs_bare  # noqa: E402

LAYERS, EXPERTS, TOPK, TOKENS = 58, 256, 8, 4096
EXPERTS_DRAWN = """() => {
  const ok = (id) => { const gd = document.querySelector('#' + id + ' .js-plotly-plot');
                       return gd && gd.data && gd.data.length > 0 && gd.querySelector('.main-svg')
                              && !(gd.layout.meta && gd.layout.meta.empty); };
  return ['exp-counts', 'exp-imbalance', 'exp-share', 'exp-bias'].every(ok);
}"""
PANELS = ["exp-counts", "exp-imbalance", "exp-share", "exp-bias"]


def write_run(path: Path, steps: int, every: int) -> float:
    """The run (see the module docstring); seconds to write it."""
    from inspector.store.recorder import Recorder

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    names = [f"layers.{i + 3}.ffn.router" for i in range(LAYERS)]
    pref = rng.dirichlet(np.full(EXPERTS, 2.0), size=LAYERS)          # each layer's own uneven preference
    with Recorder(path, name=f"moe-{LAYERS}x{EXPERTS}", queue_size=1 << 14) as rec:
        for step in range(0, steps, every):
            drift = 1 + 0.5 * np.sin(step / 5000 + np.arange(EXPERTS) / 9)
            p = pref * drift
            p /= p.sum(1, keepdims=True)
            counts = np.stack([rng.multinomial(TOKENS * TOPK, p[i]) for i in range(LAYERS)])
            mean = counts.mean(1)
            rec.submit("expert_load", {
                "step": step, "name": names, "layer": np.arange(3, 3 + LAYERS), "counts": counts,
                "imbalance": counts.max(1) / mean, "cv": counts.std(1) / mean,
                "router_entropy": np.full(LAYERS, 5.2), "dropped": 0, "aux_loss": None,
                "bias": (0.01 * rng.standard_normal((LAYERS, EXPERTS))).astype(np.float32)}, LAYERS, step)
            if step % 5000 == 0:
                rec.scalar("loss", 2.0, step=step)
        rec.flush(300)
    return time.perf_counter() - t0


def figures(run, step: int) -> None:
    """The Experts page's four panels at `step`, on the server (what its callbacks compute)."""
    from inspector.dash_app.pages import experts as page

    page.counts_figure(run, step), page.bias_figure(run, step), page.imbalance_figure(run)
    page.share_figure(run, 3)


def main() -> None:
    """Write, serve, time, print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--root", default=None, help="a directory whose run `moe` an earlier call wrote (else one is written)")
    a = ap.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from inspector.dash_app import create_app
    from inspector.views.live import LiveRun

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.root or tmp)
        secs = write_run(root / "moe", a.steps, a.every) if a.root is None else float("nan")
        size = sum(f.stat().st_size for f in (root / "moe").rglob("*") if f.is_file())
        sampled = len(range(0, a.steps, a.every))
        written = f"written in {secs:.1f} s" if a.root is None else f"reused from {root}"
        print(f"{LAYERS} layers × {EXPERTS} experts, {sampled:,} sampled steps of {a.steps:,}: {written}, "
              f"{size / 2**20:.1f} MiB ({size / sampled / 1024:.1f} KiB per sampled step)")
        t0 = time.perf_counter()
        run = LiveRun(root / "moe")
        run.table("expert_load")
        print(f"first read of the expert load on the server: {time.perf_counter() - t0:.2f} s")
        for label in ("server, first draw", "server, step change"):
            t0 = time.perf_counter()
            figures(run, 10 ** 9 if label.endswith("draw") else a.steps // 2)
            print(f"{label}: the four Experts panels computed in {time.perf_counter() - t0:.2f} s")
        from inspector.views.summary import run_summary

        t0 = time.perf_counter()
        run_summary(run)
        print(f"inspector summary's report built in {time.perf_counter() - t0:.2f} s (the run open)")
        run.close()
        app = create_app(root, poll_s=60)
        page_t, base_t = page_vs_bare(app, "/experts?run=moe", EXPERTS_DRAWN, a.repeats)
        panels = drawn_after_layout(app, "/experts?run=moe", PANELS, a.repeats)
        app.inspector_registry.close()
        bare = [d["g"] for d in drawn_after_layout(baseline_app(), "/", ["g"], a.repeats)]
    print(f"experts page drawn      {fmt(page_t)}")
    print(f"bare Dash page (1 graph) {fmt(base_t)}")
    med = statistics.median(page_t)
    print(f"experts page / bare page: {med / statistics.median(base_t):.2f}× (+{med - statistics.median(base_t):.2f} s)")
    counts = [d["exp-counts"] for d in panels]
    every = [max(d.values()) for d in panels]
    print(f"after the Dash app is up (its layout fetched): the 58×256 heatmap drawn in {fmt(counts)}, all four "
          f"panels in {fmt(every)}; a bare page's one graph in {fmt(bare)}")
    print(f"heatmap draws in ≤ 1 s once the app is up: {'PASS' if statistics.median(counts) <= 1.0 else 'FAIL'}")


if __name__ == "__main__":
    main()
