"""`inspector export --format eplb`: inference expert load as an expert-parallel load balancer takes it.

DeepSeek's EPLB (`eplb.rebalance_experts(weight, ...)`), like SGLang's and vLLM's expert-distribution
recorders, wants the load as tokens routed per logical expert, `[layers × experts]`, summed over a
window. This writes, for the steps asked (all by default), one `.npy` int64 matrix per stage
(`eplb_prefill.npy`, `eplb_decode.npy`, `eplb_all.npy`: both together, which is also where
inference load without a stage goes) summed over every rank (the cluster's load), and
`eplb.json` naming the rows (layer index and router module) and the window.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from inspector.store.reader import RunReader
from inspector.views.inference import EXPERT_KIND, STAGES, sum_layer_counts


def export_eplb(reader: RunReader, out: str | Path, *, steps: tuple[int | None, int | None] | None = None) -> list[Path]:
    """Write the EPLB matrices of `reader`'s run into `out`; returns the files (none: no inference expert load)."""
    df = reader.to_pandas(EXPERT_KIND, steps=steps)
    if df.empty:
        return []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = df["stage"] if "stage" in df else None
    files: list[Path] = []
    meta: dict[str, object] = {"steps": [int(df["step"].min()), int(df["step"].max())],
                               "ranks": sorted(int(r) for r in df["rank"].unique()), "stages": {}}
    parts = {s: df[stage == s] for s in STAGES} if stage is not None else {}
    parts["all"] = df
    for name, part in parts.items():
        layers, routers, counts = sum_layer_counts(part)
        if not layers:
            continue
        path = out / f"eplb_{name}.npy"
        np.save(path, counts.astype(np.int64))
        files.append(path)
        meta["stages"][name] = {"file": path.name, "shape": list(counts.shape), "layers": layers,  # type: ignore[index]
                                "routers": routers, "tokens": int(counts.sum())}
    path = out / "eplb.json"
    path.write_text(json.dumps(meta, indent=1))
    files.append(path)
    return files
