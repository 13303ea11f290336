"""Stage 6, a small GPU sample run for sample_runs/: the engine's `tiny` config, 40 steps, default probes.

Written to `OUT/sample_runs/gpu-tiny` (a dry run: `OUT/sample_runs/dryrun-debug`, the `debug` config
on the CPU, 8 steps) by the engine's Trainer (bf16 autocast on CUDA) with `inspector.watch(probes=
"default")` and the heavy probes sampled every 10 steps, as sample_runs/make_samples.py samples.
The run's config names the device, torch and the kit. Then it is read back: every record kind the
default probes write on this model must be there; timing rows (CUDA events resolved on the writer
thread) must be finite and positive; on a GPU the `system` rows of gpu0 must carry utilisation and
memory. The lead copies the folder into sample_runs/.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from benchmarks.gpu_check.common import Result, cuda_ready, dry_run, judge, no_cuda, quick, run_stage

EVERY = {"attention": 10, "activations": 10, "gradients": 10, "experts": 5}
EXPECTED_KINDS = ("scalar", "timing", "system", "histogram", "grad_stats", "expert_load", "attention_map")


def body(out: Path, res: Result) -> None:
    """Train, record, read back, judge."""
    import torch

    import inspector
    from inspector_engine.config import get_config
    from inspector_engine.training import TrainConfig, Trainer
    from inspector.demo import RecordingCallback

    on_gpu = cuda_ready()
    if not on_gpu and not dry_run():
        no_cuda(res, "torch sees no CUDA device")
        return
    config, steps, name = ("tiny", 20 if quick() else 40, "gpu-tiny") if on_gpu else ("debug", 8, "dryrun-debug")
    run_dir = out / "sample_runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    model_cfg = get_config(config)
    train_cfg = TrainConfig(steps=steps, seed=0, batch_size=8, seq_len=64, eval_every=20, progress=False,
                            device="cuda" if on_gpu else "cpu", num_threads=None if on_gpu else 1)
    trainer = Trainer(model_cfg, train_cfg)
    device = str(trainer.device)
    gpu = torch.cuda.get_device_name(0) if on_gpu else "none"
    watch = inspector.watch(trainer.model, run_dir, optimizer=trainer.optimizer, probes="default", every=EVERY,
                            name=name, config={"model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
                                               "engine_config": config, "made_by": "benchmarks/gpu_check.sh",
                                               "device": device, "gpu": gpu, "torch": torch.__version__})
    trainer.callbacks.append(RecordingCallback(watch))
    try:
        trainer.run()
    finally:
        watch.close()
        trainer.close()
    run = inspector.open_run(run_dir)
    kinds = run.kinds()
    fig = res.figures
    fig["run"] = str(run_dir)
    fig["config / steps / device"] = f"{config} / {steps} / {device} ({gpu})"
    fig["frames by kind"] = {k: v["frames"] for k, v in sorted(kinds.items())}
    fig["size"] = f"{run.size_bytes() / 2**20:.2f} MiB"
    missing = [k for k in EXPECTED_KINDS if k not in kinds]
    timing = run.to_pandas("timing")
    ms = timing["ms"].to_numpy(np.float64)
    total = timing[(timing["name"] == "step") & (timing["phase"] == "total")]["ms"].to_numpy(np.float64)
    fig["timing rows / finite and > 0"] = f"{len(ms)} / {int(np.sum(np.isfinite(ms) & (ms > 0)))}"
    fig["step total ms (median)"] = float(np.median(total)) if len(total) else None
    ok = not missing and len(ms) > 0 and bool(np.all(np.isfinite(ms))) and len(total) >= steps - 1
    system = run.to_pandas("system")
    if on_gpu:
        gpu0 = system[system["device"].astype(str) == "gpu0"]
        fig["gpu0 system rows"] = len(gpu0)
        ok &= len(gpu0) > 0 and bool(gpu0["gpu_util"].notna().any()) and bool(gpu0["torch_allocated"].notna().any())
    if missing:
        res.notes.append(f"missing kinds: {missing}")
    res.budget = "every default kind; timing finite"
    judge(res, ok)


if __name__ == "__main__":
    sys.exit(run_stage("sample_run", body))
