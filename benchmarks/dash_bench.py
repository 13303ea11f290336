"""Dashboard speed in a real browser (Debian's Chromium via Playwright), against its budget and a baseline.

Figures:
- first render: navigation to the overview page fully drawn (loss, lr, grad norm and step-time charts
  plotted, anomaly list present), on runs of 10,000 and 100,000 steps (budget 2 s and 3 s);
- step change: click on "−10" on the attention page until the layer × head grid and the large map
  show the new step (budget 300 ms per change); maps every 10 steps on the 10k run (each click
  changes the map), every 100 on the 100k run (most clicks keep the map, the figures still redraw);
- baseline, measured in the same run: a bare Dash page with one empty graph (navigation to drawn),
  and a bare Dash button → server callback → small heatmap redraw.
Also printed: the time to write each run and to open it on the server (the first read, done once).

    .venv/bin/python benchmarks/dash_bench.py [--steps 10000 100000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAYERS, HEADS, SEQ, EXPERTS, BINS = 4, 8, 32, 16, 64
PARAM_GROUPS = [f"layers.{i}.{p}" for i in range(LAYERS) for p in ("attn", "ffn")]


def write_run(path: Path, steps: int, *, chunk: int = 1000, attention_every: int = 100) -> float:
    """A run of `steps` steps with every record kind, written in bulk through the real Recorder; seconds."""
    from inspector.store.recorder import Recorder

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    causal = np.tril(np.ones((SEQ, SEQ), bool))
    with Recorder(path, name=f"bench-{steps}", queue_size=1 << 16) as rec:
        for lo in range(0, steps, chunk):
            s = np.arange(lo, min(lo + chunk, steps))
            n = len(s)
            loss = 5 * np.exp(-s / (steps / 5)) + 1.5 + 0.05 * rng.standard_normal(n)
            loss[s % 7919 == 7000] += 5.0                                  # spikes
            names = ["loss", "lr", "grad_norm/global", "tokens_per_s"]
            vals = np.stack([loss, np.full(n, 3e-4), 1 + 0.1 * np.sin(s / 50), np.full(n, 12_000.0)], 1)
            rec.submit("scalar", {"step": np.repeat(s, 4), "name": names * n, "value": vals.reshape(-1)}, 4 * n)
            tnames = ["model", "model", "optimizer", "step", "step"]
            phases = ["forward", "backward", "optimizer", "other", "total"]
            ms = np.stack([np.full(n, 10.0), np.full(n, 20.0), np.full(n, 3.0), np.full(n, 2.0),
                           35 + rng.random(n)], 1)
            rec.submit("timing", {"step": np.repeat(s, 5), "name": tnames * n, "phase": phases * n,
                                  "ms": ms.reshape(-1)}, 5 * n)
            g = s[s % 50 == 0]
            if len(g):
                k = len(PARAM_GROUPS)
                norm = rng.random(len(g) * k) + 0.1
                rec.submit("grad_stats", {"step": np.repeat(g, k), "name": PARAM_GROUPS * len(g), "norm": norm,
                                          "mean": 0.0, "var": norm ** 2 / 100, "max_abs": norm / 3, "zero_frac": 0.0,
                                          "update_ratio": norm * 1e-3, "var_over_steps": 1e-4}, len(g) * k)
            e = s[s % 10 == 0]
            if len(e):
                counts = rng.multinomial(4096, np.ones(EXPERTS) / EXPERTS, size=len(e) * LAYERS)
                rec.submit("expert_load", {"step": np.repeat(e, LAYERS), "name": [f"layers.{i}.ffn" for i in
                                                                                 range(LAYERS)] * len(e),
                                           "layer": list(range(LAYERS)) * len(e), "counts": counts,
                                           "imbalance": counts.max(1) / counts.mean(1), "cv": counts.std(1) / counts.mean(1),
                                           "router_entropy": 2.0, "dropped": 0, "aux_loss": 0.01},
                           len(e) * LAYERS)
                rec.submit("system", {"step": e, "device": "cuda:0", "gpu_util": 90.0, "mem_used": 4e9,
                                      "mem_total": 8e9, "power_w": 200.0, "temp_c": 60.0}, len(e))
            for st in s[s % 100 == 0]:
                h = np.stack([np.histogram(rng.standard_normal(512), bins=BINS, range=(-4, 4))[0] for _ in range(LAYERS)])
                rec.histograms([f"activations/layers.{i}" for i in range(LAYERS)], h, [-4.0] * LAYERS, [4.0] * LAYERS,
                               step=int(st))
                rec.submit("activation_stats", {"name": [f"layers.{i}" for i in range(LAYERS)], "mean": 0.0, "std": 1.0,
                                                "min": -4.0, "max": 4.0, "dead_frac": 0.01, "saturated_frac": 0.0,
                                                "nonfinite": 0}, LAYERS, step=int(st))
            for st in s[s % attention_every == 0]:
                logits = rng.standard_normal((LAYERS, HEADS, SEQ, SEQ))
                p = np.exp(np.where(causal, logits, -np.inf))
                p /= p.sum(-1, keepdims=True)
                for layer in range(LAYERS):
                    rec.attention_map(f"layers.{layer}.attn", p[layer], layer=layer, step=int(st),
                                      tokens=[f"tok{i}" for i in range(SEQ)])
                ent = -(p * np.log(np.where(p > 0, p, 1))).sum(-1).mean(-1)
                rec.submit("attention_stats", {"name": [f"layers.{l}.attn" for l in range(LAYERS) for _ in range(HEADS)],
                                               "layer": [l for l in range(LAYERS) for _ in range(HEADS)],
                                               "head": list(range(HEADS)) * LAYERS, "entropy": ent.reshape(-1),
                                               "max_weight": p.max(-1).mean(-1).reshape(-1), "collapsed": False},
                           LAYERS * HEADS, step=int(st))
            if lo % 20_000 == 0:
                rec.anomaly("loss_spike", "loss spike", step=int(s[0]), value=float(loss[0]))
            rec.flush(60)
    return time.perf_counter() - t0


@contextlib.contextmanager
def serve(app):
    """`app` (Dash) on 127.0.0.1:<free port> in a thread."""
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, app.server, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        t.join(5)


def baseline_app():
    """A bare Dash page: one empty graph, and a button whose server callback redraws a small heatmap."""
    import dash
    from dash import Input, Output, dcc, html

    app = dash.Dash(__name__, eager_loading=True)
    app.layout = html.Div([html.Button("go", id="go", n_clicks=0), dcc.Graph(id="g")])

    @app.callback(Output("g", "figure"), Input("go", "n_clicks"))
    def draw(n):
        z = np.random.default_rng(n).random((32, 32))
        return {"data": [{"type": "heatmap", "z": z.tolist()}], "layout": {"title": {"text": f"n={n}"}}}

    return app


OVERVIEW_DRAWN = """() => {
  const ok = (id) => { const gd = document.querySelector('#' + id + ' .js-plotly-plot');
                       return gd && gd.data && gd.data.length > 0 && gd.querySelector('.main-svg'); };
  return ['ov-loss', 'ov-lr', 'ov-gnorm', 'ov-time'].every(ok) && document.querySelector('#ov-anomalies table');
}"""
SELECTED_JS = """([id, step]) => { const gd = document.querySelector('#' + id + ' .js-plotly-plot');
  return gd && gd.layout && gd.layout.meta && gd.layout.meta.selected === step; }"""
TITLE_JS = """([id, text]) => { const gd = document.querySelector('#' + id + ' .js-plotly-plot');
  return gd && gd.layout && gd.layout.title && String(gd.layout.title.text).includes(text); }"""


def timed_nav(ctx, url: str, ready_js: str, repeats: int) -> list[float]:
    """Seconds from navigation to `ready_js` true, in a new tab each time (first one discarded as warm-up)."""
    out = []
    for i in range(repeats + 1):
        page = ctx.new_page()
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_function(ready_js, timeout=60_000, polling=10)
        dt = time.perf_counter() - t0
        page.close()
        if i:
            out.append(dt)
    return out


BASE_DRAWN = """() => { const gd = document.querySelector('#g .js-plotly-plot');
  return gd && gd.data && gd.data.length > 0 && gd.querySelector('.main-svg'); }"""


def page_vs_bare(app, path: str, ready_js: str, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds to navigate to `path` of the dashboard `app` until `ready_js`, and to a bare Dash page
    until its graph is drawn, `repeats` times each in Chromium (the bare page is the baseline)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, serve(app) as url, serve(baseline_app()) as base_url:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        page_t = timed_nav(ctx, f"{url}{path}", ready_js, repeats)
        base_t = timed_nav(ctx, base_url, BASE_DRAWN, repeats)
        browser.close()
    return page_t, base_t



DRAWN_TIMES_JS = """(ids) => {
  window.__drawn = {};
  const poll = () => {
    for (const id of ids) {
      if (window.__drawn[id]) continue;
      const gd = document.querySelector('#' + id + ' .js-plotly-plot');
      if (gd && gd.data && gd.data.length > 0 && gd.querySelector('.main-svg') && !(gd.layout.meta && gd.layout.meta.empty))
        window.__drawn[id] = performance.now();
    }
    if (Object.keys(window.__drawn).length < ids.length) setTimeout(poll, 5);
  };
  setTimeout(poll, 5);
}"""


def drawn_after_layout(app, path: str, graphs: list[str], repeats: int) -> list[dict[str, float]]:
    """Per navigation to `path` of `app` (the first discarded as warm-up): seconds from the moment the
    Dash app is up (its `_dash-layout` fetched: Dash's own scripts loaded and run) to each of `graphs`
    drawn; what the page's own callbacks and figures cost, without Dash's start-up."""
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p, serve(app) as url:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        ctx.add_init_script(f"({DRAWN_TIMES_JS})({graphs!r})")
        for i in range(repeats + 1):
            page = ctx.new_page()
            page.goto(f"{url}{path}")
            page.wait_for_function(f"() => window.__drawn && Object.keys(window.__drawn).length >= {len(graphs)}",
                                   timeout=60_000, polling=10)
            drawn = page.evaluate("() => window.__drawn")
            up = page.evaluate("() => performance.getEntriesByType('resource')"
                               ".filter(e => e.name.includes('_dash-layout'))[0].responseEnd")
            page.close()
            if i:
                out.append({g: (drawn[g] - up) / 1000.0 for g in graphs})
        browser.close()
    return out

def step_latency(ctx, url: str, changes: int) -> list[float]:
    """Seconds per "−10" click on the attention page until grid and large map are redrawn for the new step
    (their layout.meta.selected)."""
    page = ctx.new_page()
    page.goto(url)
    page.wait_for_function(TITLE_JS, arg=["attn-big", "step"], timeout=60_000)
    out = []
    for _ in range(changes):
        label = page.locator("#step-label").inner_text()
        step = int(label.split()[1].replace(",", "")) - 10
        t0 = time.perf_counter()
        page.locator("#step-m10").click()
        page.wait_for_function(SELECTED_JS, arg=["attn-grid", step], timeout=30_000, polling=5)
        page.wait_for_function(SELECTED_JS, arg=["attn-big", step], timeout=30_000, polling=5)
        out.append(time.perf_counter() - t0)
    page.close()
    return out


def baseline_click(ctx, url: str, changes: int) -> list[float]:
    """Seconds per click of the bare app's button until its heatmap shows the new title."""
    page = ctx.new_page()
    page.goto(url)
    page.wait_for_function(TITLE_JS, arg=["g", "n=0"], timeout=60_000)
    out = []
    for i in range(1, changes + 1):
        t0 = time.perf_counter()
        page.locator("#go").click()
        page.wait_for_function(TITLE_JS, arg=["g", f"n={i}"], timeout=30_000, polling=5)
        out.append(time.perf_counter() - t0)
    page.close()
    return out


def fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:7.0f} ms  (min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--changes", type=int, default=10)
    a = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from playwright.sync_api import sync_playwright

    from inspector.dash_app import create_app

    budgets = {10_000: 2.0, 100_000: 3.0}
    with tempfile.TemporaryDirectory(prefix="dash-bench-") as tmp, \
            tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                   viewport={"width": 1400, "height": 1000})
        with serve(baseline_app()) as url:
            base_nav = timed_nav(ctx, url, "() => !!document.querySelector('#g .js-plotly-plot .main-svg')", a.repeats)
            base_click = baseline_click(ctx, url, a.changes)
        print(f"baseline  bare Dash page, one graph: navigation → drawn   {fmt(base_nav)}")
        print(f"baseline  bare Dash button → callback → heatmap redraw   {fmt(base_click)}")
        for steps in a.steps:
            run = Path(tmp) / f"run-{steps}"
            wt = write_run(run, steps, attention_every=10 if steps <= 10_000 else 100)   # 1,000 map steps either way
            t0 = time.perf_counter()
            app = create_app(run)
            opened = time.perf_counter() - t0
            with serve(app) as url:
                nav = timed_nav(ctx, url + "/", OVERVIEW_DRAWN, a.repeats)
                budget = budgets.get(steps, 3.0)
                med = statistics.median(nav)
                print(f"{steps:>7,} steps  (written in {wt:.1f} s; server opens it in {opened:.2f} s, once)")
                print(f"          overview first render                        {fmt(nav)}  = "
                      f"{med / budget:.2f} × budget {budget:.0f} s, {med / statistics.median(base_nav):.1f} × baseline")
                every = 10 if steps <= 10_000 else 100
                lat = step_latency(ctx, url + "/attention", a.changes)
                m = statistics.median(lat)
                print(f"          attention step change (−10, maps every {every:>3})   {fmt(lat)}  = "
                          f"{m / 0.3:.2f} × budget 300 ms, {m / statistics.median(base_click):.1f} × baseline")
            app.inspector_registry.close()
        ctx.close()


if __name__ == "__main__":
    main()
