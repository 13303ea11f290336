"""Inference-mode overhead (issue 16): decode tokens/s of the engine with the default inference
probes against none, interleaved. Budget: none / watched ≤ 1.03.

Two copies of one model (same seed), each serving the same batch through the engine's
`BatchScheduler`: one unwatched, one under `inspector.watch(model, run, mode="inference")` (default
inference probes: attention every 16 iterations, expert load added up every iteration (the engine routers'
own per-forward buffers, read once per forward) and recorded every 16th, system, plus the
iteration and request records) with the scheduler observed. A round submits `--batch` prompts of
`--prompt-len` tokens to a scheduler per variant, runs one `step()` of each (admission: every
prefill), then runs the remaining steps, which are pure batched decode, in lockstep: one
iteration of each variant in turn, the order alternating every iteration, each iteration timed
on its own, so a slow spell of a shared machine hits every variant alike. After each round the
recorders are flushed and the harness sleeps `--settle` s, untimed. Reported: median decode
tokens/s per variant, the ratio of the medians and the median of per-round ratios ("paired"),
the serving thread's CPU time against none's and its time off CPU (waiting for the GIL the
recorder's writer thread holds, or for a core), and whether greedy outputs agree (they must:
recording never changes what the model computes).
Attribute costs pairwise (`--variants none,probe-experts`, then the next): with three or more
variants the middle ones always run between two others, and that position alone moved a
variant's figure by a few percent on this 2-core machine.

    python benchmarks/inference_overhead.py --config tiny --rounds 12
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import inspector  # noqa: E402
from inspector_engine.config import get_config  # noqa: E402
from inspector_engine.inference import BatchScheduler, SamplingParams  # noqa: E402
from inspector_engine.model import Transformer  # noqa: E402

BUDGET = 1.03


def lockstep(models: dict[str, Transformer], watches: dict[str, object | None], prompts: list[list[int]],
             new: int, flip: bool, cpu: dict[str, float]) -> tuple[dict[str, float], dict[str, int], dict[str, list]]:
    """Serve `prompts` on every variant at once, one scheduler iteration of each in turn (the
    order alternating every iteration), timing each decode iteration on its own; per variant:
    (decode seconds, decode tokens, outputs). The serving thread's CPU seconds of those iterations
    are added to `cpu`."""
    names = list(models)
    scheds, drivers = {}, {}
    for n in names:
        scheds[n] = BatchScheduler(models[n], max_batch_size=len(prompts),
                                   max_batch_tokens=len(prompts) * (len(prompts[0]) + new))
        w = watches[n]
        drivers[n] = w.observe(scheds[n]) if w is not None else None
        for p in prompts:
            scheds[n].submit(p, new, SamplingParams(temperature=0.0))
        scheds[n].step()                           # admission: every prompt prefilled, one token each
    before = {n: sum(len(r.output) for r in scheds[n].running) for n in names}
    seconds = dict.fromkeys(names, 0.0)
    done: dict[str, list] = {n: [] for n in names}
    i = 0
    while any(s.has_work for s in scheds.values()):
        order = names if (i + flip) % 2 == 0 else names[::-1]
        for n in order:
            if scheds[n].has_work:
                t0, c0 = time.perf_counter(), time.thread_time()
                done[n] += scheds[n].step()
                seconds[n] += time.perf_counter() - t0
                cpu[n] += time.thread_time() - c0
        i += 1
    tokens = {n: sum(len(r.output) for r in done[n]) - before[n] for n in names}
    for d in drivers.values():
        if d is not None:
            d.remove()
    return seconds, tokens, {n: [r.output for r in sorted(done[n], key=lambda r: r.id)] for n in names}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when within budget."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--settle", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", default="none,default",
                   help="comma list: none, copy (a second unwatched model: the harness's own A/A spread), default, records (request/iteration records only), probe-NAME (one probe)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    if "none" not in names:
        names.insert(0, "none")
    torch.manual_seed(0)
    cfg = get_config(a.config)
    base = Transformer(cfg).eval()
    models = {n: base if n == "none" else Transformer(cfg).eval() for n in names}
    for m in models.values():
        m.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, cfg.vocab_size, (a.prompt_len,), generator=g).tolist() for _ in range(a.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        watches = {n: None if n in ("none", "copy") else inspector.watch(models[n], Path(tmp) / n, mode="inference",
                                                               hang_after_s=None, probes=_probes(n))
                   for n in names}
        cpu = dict.fromkeys(names, 0.0)
        wall = dict.fromkeys(names, 0.0)
        lockstep(models, watches, prompts, 8, False, dict(cpu))     # warm-up, untimed
        rates: dict[str, list[float]] = {n: [] for n in names}
        outputs: dict[str, list] = {}
        for r in range(a.rounds):
            secs, toks, outputs = lockstep(models, watches, prompts, a.new_tokens, bool(r % 2), cpu)
            for name in names:
                wall[name] += secs[name]
                rates[name].append(toks[name] / secs[name])
                if watches[name] is not None:
                    watches[name].recorder.flush()
            time.sleep(a.settle)
        for w in watches.values():
            if w is not None:
                w.close()
    print(f"config {a.config} · batch {a.batch} · prompt {a.prompt_len} · {a.new_tokens} new tokens · "
          f"{a.rounds} rounds · torch threads {torch.get_num_threads()}")
    med = {n: statistics.median(v) for n, v in rates.items()}
    for n, v in rates.items():
        paired = statistics.median(x / y for x, y in zip(rates["none"], v))
        print(f"  {n:<16} decode {med[n]:8.1f} tokens/s (p10 {sorted(v)[len(v) // 10]:.1f}, "
              f"p90 {sorted(v)[(9 * len(v)) // 10 - 1 if len(v) >= 10 else -1]:.1f})"
              f"  none/{n} {med['none'] / med[n]:.3f}x (paired {paired:.3f}x)")
    for n in names:
        if n != "none":
            print(f"  {n:<16} serving thread, against none: CPU {cpu[n] / cpu['none']:.3f}x, "
                  f"off CPU (waiting for the GIL or a core) {(wall[n] - cpu[n]) * 1e3 / len(rates[n]):.1f} "
                  f"ms a round against {(wall['none'] - cpu['none']) * 1e3 / len(rates['none']):.1f}")
    same = all(outputs[n] == outputs["none"] for n in names)
    print(f"  greedy outputs identical watched vs unwatched: {same}")
    if "default" not in med:
        return 0 if same else 1
    ratio = med["none"] / med["default"]
    verdict = "PASS" if ratio <= BUDGET else "FAIL"
    print(f"  slowdown none/default = {ratio:.3f}x, budget {BUDGET}x: {verdict}")
    return 0 if ratio <= BUDGET and same else 1


def _probes(variant: str) -> str | list[str]:
    """The `probes=` argument of a variant."""
    if variant == "copy":
        return []
    if variant == "default":
        return "default"
    if variant == "records":
        return []
    if variant.startswith("probe-"):
        return [variant[len("probe-"):]]
    raise SystemExit(f"unknown variant {variant!r}")


if __name__ == "__main__":
    sys.exit(main())
