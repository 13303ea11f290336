"""Does the Inspector name each planted fault, and does it stay quiet on healthy runs?

A faulty sample run lists what it planted in its config under `expected_findings` (see
sample_runs/make_samples.py and hf_samples.py); each entry has a `check`:
- `anomaly`: an anomaly of `kind` within `tolerance` steps of `step`, at `module` (or inside it);
- `collapsed_head`: the summary lists (`layer`, `head`) with its onset near `step`, and the head is
  still flagged at the last sampled step (the flag must not wear off while the fault lasts);
- `starved_expert`: the summary lists `expert` of router `module` as starved, and an
  `expert_starved` anomaly names it;
- `straggler`: the summary flags `rank`, and only it;
- `explain`: `inspector explain` at the loss spike near `step` ranks first a signal of `module`
  (or of a parameter inside it);
- `loss_as_of_call`: the recorded `scalar` is what the loop passed at `step()`, not what the loop
  reset it to afterwards (0): every recorded value is non-zero and finite values are plausible losses.
Everything here reads the run through the summary a user sees (`run_summary`) or plain frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inspector.views.live import LiveRun
from inspector.views.summary import RunSummary, run_summary


FAULTY = ["faults", "straggler-4rank", "hf-llama-faults", "hf-bert-faults"]
"""The sample runs with planted faults (half engine, half tiny Hugging Face models)."""
HEALTHY = ["healthy-moe", "healthy-llama"]
"""The sample runs without a fault (different models, lengths and seeds)."""


@dataclass
class Finding:
    """One expected finding of one run, and whether the Inspector made it."""

    run: str
    fault: str
    found: bool
    detail: str


def _inside(found: str, expected: str) -> bool:
    return found == expected or found.startswith(expected + ".")


def _anomalies(run: LiveRun) -> pd.DataFrame:
    df = run.frame("anomaly")
    return df if not df.empty else pd.DataFrame(columns=["step", "rank", "kind", "module", "message"])


def _check_anomaly(run: LiveRun, summary: RunSummary, e: dict[str, Any]) -> tuple[bool, str]:
    df = _anomalies(run)
    rows = df[df["kind"] == e["kind"]].sort_values("step")
    if rows.empty:
        return False, f"no {e['kind']} anomaly"
    near = rows[(rows["step"] - e["step"]).abs() <= e.get("tolerance", 0)]
    if "module" in e:
        near = near[[_inside(str(m), e["module"]) for m in near["module"]]]
    if near.empty:
        seen = ", ".join(f"step {r.step} {r.module or '-'}" for r in rows.head(3).itertuples())
        return False, f"{e['kind']} only at {seen}"
    r = near.iloc[0]
    return True, f"{e['kind']} at step {int(r['step'])}" + (f" in {r['module']}" if r["module"] else "")


def _check_collapsed(run: LiveRun, summary: RunSummary, e: dict[str, Any]) -> tuple[bool, str]:
    onsets = [s for layer, head, s in summary.collapsed_heads if (layer, head) == (e["layer"], e["head"])]
    name = f"L{e['layer']}·H{e['head']}"
    if not onsets or abs(onsets[0] - e["step"]) > e.get("tolerance", 0):
        return False, f"{name} not listed near step {e['step']} (listed: {summary.collapsed_heads})"
    stats = run.frame("attention_stats")
    stats = stats[stats["rank"] == 0]
    last = stats[stats["step"] == stats["step"].max()]
    flag = last[(last["layer"] == e["layer"]) & (last["head"] == e["head"])]["collapsed"]
    if not (len(flag) and bool(flag.iloc[0])):
        return False, f"{name} collapsed at step {onsets[0]} but no longer flagged at step {int(last['step'].max())}"
    return True, f"{name} collapsed from step {onsets[0]}, still flagged at step {int(last['step'].max())}"


def _check_starved(run: LiveRun, summary: RunSummary, e: dict[str, Any]) -> tuple[bool, str]:
    layer = [x for x in summary.experts if x.name == e["module"]]
    if not layer or e["expert"] not in layer[0].starved_experts:
        return False, f"expert {e['expert']} of {e['module']} not listed as starved"
    ok, detail = _check_anomaly(run, summary, {**e, "kind": "expert_starved"})
    df = _anomalies(run)
    named = df[(df["kind"] == "expert_starved") & df["message"].str.contains(rf"\b{e['expert']}\b")]
    return ok and not named.empty, f"expert {e['expert']} starved; {detail}"


def _check_straggler(run: LiveRun, summary: RunSummary, e: dict[str, Any]) -> tuple[bool, str]:
    ranks = [s[0] for s in summary.stragglers]
    return ranks == [e["rank"]], f"stragglers flagged: {ranks or 'none'}"


def _check_loss_as_of_call(run: LiveRun, summary: RunSummary, e: dict[str, Any]) -> tuple[bool, str]:
    df = run.frame("scalar")
    values = df[(df["name"] == e["scalar"]) & (df["rank"] == 0)].sort_values("step")["value"].to_numpy()
    finite = values[np.isfinite(values)]
    zeros = int((values == 0).sum())
    ok = len(values) > 0 and zeros == 0 and bool((finite > 0.1).all())
    return ok, f"{len(values)} values recorded, {zeros} read as 0, last {values[-1] if len(values) else None:.4g}"


def _check_explain(run: LiveRun, summary: RunSummary, e: dict[str, Any]) -> tuple[bool, str]:
    from inspector.views.explain import explain, spike_steps

    steps = [s for s in spike_steps(run) if abs(s - e["step"]) <= e.get("tolerance", 0)]
    if not steps:
        return False, f"no loss spike near step {e['step']} to explain"
    first = explain(run, steps[0]).first
    if first is None:
        return False, f"explain step {steps[0]}: no signal left its baseline"
    where = f"{first.signal} of {first.subject or 'the model'}, step {first.left_at} ({first.factor:.3g}x its baseline)"
    return _inside(first.subject, e["module"]), f"explain step {steps[0]} ranks first: {where}"


CHECKS = {"anomaly": _check_anomaly, "explain": _check_explain, "collapsed_head": _check_collapsed, "starved_expert": _check_starved,
          "straggler": _check_straggler, "loss_as_of_call": _check_loss_as_of_call}


def expected_findings(run: LiveRun) -> list[dict[str, Any]]:
    """What the run says was planted in it (empty for a healthy run)."""
    return list(run.meta.config.get("expected_findings") or [])


def check_run(path: str | Path) -> list[Finding]:
    """Each expected finding of the run at `path`, found or not."""
    run = LiveRun(Path(path))
    summary = run_summary(run)
    out = []
    for e in expected_findings(run):
        found, detail = CHECKS[e["check"]](run, summary, e)
        out.append(Finding(run.meta.name, e["fault"], found, detail))
    return out


def alarms(path: str | Path) -> list[str]:
    """Everything the Inspector flags in the run at `path` (for a healthy run: false alarms)."""
    run = LiveRun(Path(path))
    summary = run_summary(run)
    out = [f"{g.kind} ×{g.count} from step {g.first_step}" + (f" in {g.first_module}" if g.first_module else "")
           for g in summary.anomalies]
    out += [f"collapsed head L{layer}·H{head} from step {s}" for layer, head, s in summary.collapsed_heads]
    out += [f"starved experts {e.starved_experts} in {e.name}" for e in summary.experts if e.starved_experts]
    out += [f"straggler rank {s[0]} ({s[1]})" for s in summary.stragglers]
    return out
