"""Stage 7, deterministic mode: the default probes under `torch.use_deterministic_algorithms(True)`.

Research training often runs in deterministic mode; on CUDA some kernels then raise (e.g.
`torch.histc`, which the activations probe uses on CUDA only, while the CPU path bins with
`bincount`). The engine's `debug` model (if it has a kernel without a deterministic version
itself: the FSDP stage's attention + MLP model) trains 4 steps (bf16 autocast on CUDA) unwatched, then
watched with `probes="default", every=1`, from the same seed and batches, with
`CUBLAS_WORKSPACE_CONFIG=:4096:8`. Reported: the probes switched off (their `probe_error`
anomalies) and whether the losses are bitwise equal (deterministic kernels, and probes that never
change what the model computes). PASS: no probe switched off, losses identical.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.common import Result, cuda_ready, dry_run, judge, no_cuda, run_stage

STEPS = 4


def build(which: str) -> tuple[Any, int]:
    """(model, vocabulary size): the engine's `debug` model, or the FSDP stage's attention + MLP model."""
    import torch

    torch.manual_seed(0)
    if which == "engine debug":
        from inspector_engine.config import get_config
        from inspector_engine.model import Transformer

        cfg = get_config("debug")
        return Transformer(cfg), cfg.vocab_size
    from benchmarks.gpu_check.fsdp_compile import VOCAB, build_model

    return build_model(64), VOCAB


def train(device: Any, run_dir: Path | None, which: str) -> list[float]:
    """Losses of `STEPS` steps of model `which`, watched into `run_dir` when given."""
    import contextlib

    import torch
    import torch.nn.functional as F

    import inspector

    model, vocab = build(which)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    w = inspector.watch(model, run_dir, optimizer=opt, probes="default", every=1) if run_dir else None
    gen = torch.Generator().manual_seed(1)
    losses = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    try:
        for _ in range(STEPS):
            tokens_BT = torch.randint(0, vocab, (4, 33), generator=gen).to(device)
            with autocast:
                logits_BTV = model(tokens_BT[:, :-1])
            loss = F.cross_entropy(logits_BTV.float().flatten(0, 1), tokens_BT[:, 1:].flatten())
            aux = model.aux_loss().float() if hasattr(model, "aux_loss") else 0.0
            (loss + aux).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if w is not None:
                w.step(loss=loss.detach())
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
    finally:
        if w is not None:
            w.close()
    return [float(x) for x in losses]


def body(out: Path, res: Result) -> None:
    """Unwatched, then watched, in deterministic mode; judge."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: cuBLAS determinism
    import torch

    import inspector

    on_gpu = cuda_ready()
    if not on_gpu and not dry_run():
        no_cuda(res, "torch sees no CUDA device")
        return
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    torch.use_deterministic_algorithms(True)
    fig = res.figures
    res.budget = "no probe switched off; losses bitwise equal"
    plain, which = None, ""
    for which in ("engine debug", "attention + MLP"):
        try:
            plain = train(device, None, which)
            break
        except RuntimeError as exc:  # the model itself has a kernel without a deterministic version
            res.notes.append(f"{which} model, unwatched: {str(exc).splitlines()[0][:200]}")
    if plain is None:
        res.status, res.verdict = "skipped: no deterministic model", "n/a"
        return
    run_dir = out / "work" / "determinism-run"
    watched = train(device, run_dir, which)
    fig["model"] = which
    anomalies = inspector.open_run(run_dir).to_pandas("anomaly")
    errors = anomalies[anomalies["kind"].astype(str) == "probe_error"]
    fig["device"] = str(device)
    fig["probes switched off"] = sorted(set(errors["module"].astype(str))) or "none"
    fig["first error"] = str(errors["message"].iloc[0])[:240] if len(errors) else "-"
    fig["losses bitwise equal"] = watched == plain
    fig["losses"] = f"unwatched {plain}, watched {watched}"
    judge(res, not len(errors) and watched == plain)


if __name__ == "__main__":
    sys.exit(run_stage("determinism", body))
