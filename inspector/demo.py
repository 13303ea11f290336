"""`inspector demo`: train the built-in DeepSeek-style engine with the Inspector recording.

With `ranks > 1` the demo starts itself under `torchrun` (gloo on CPU, nccl on GPU), every rank
recording into the same run directory; `slow_rank` delays one rank's forward so straggler
detection has something to find. This module and the tests are the only places that join
`engine` and `inspector`.

Start-up says what it is doing, one line per stage with the seconds since the demo started (on a
fresh machine the first training step can be a minute away: measured warm on a 2-core box, loading
torch ~4 s, Dash ~3 s, building the model and optimizer ~3 s, of which ~2 s is torch importing its
compiler stack for the optimizer, and the first step of the `tiny` config ~10 s; a cold disk cache
multiplies the imports). Under torchrun, rank 0 prints them.

The dashboard (`dash=True`) serves the run live while training. Afterwards, when stdin and stdout
are both a terminal, it keeps serving until Ctrl-C; otherwise (a script, a pipe such as
`inspector demo | cat`) nobody could stop it, so it stops, and the demo says so and prints the
`inspector dash RUN` command that reopens it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import inspector
from inspector.cli_format import human_bytes


T0_ENV = "INSPECTOR_DEMO_T0"
"""Environment variable that hands the demo's start time (epoch seconds) to its torchrun workers."""


class StartupLog:
    """Prints start-up stages, one line each, with the seconds since the demo's process started
    (or since `INSPECTOR_DEMO_T0`, for torchrun workers); silent when `enabled` is False."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.t0 = _demo_start_time()

    def stage(self, what: str) -> None:
        """Say what the demo is about to do."""
        if self.enabled:
            print(f"inspector demo: {time.time() - self.t0:5.1f} s  {what}", flush=True)


def _demo_start_time() -> float:
    """Epoch seconds when the demo started: the launcher's, else this process's start."""
    try:
        return float(os.environ[T0_ENV])
    except (KeyError, ValueError):
        pass
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - a clock for messages only
        return time.time()


class RecordingCallback:
    """Engine trainer callback that forwards each step's metrics to a `Watch`."""

    def __init__(self, watch: "inspector.Watch") -> None:
        self.watch = watch

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        """Record the step's metrics (loss, lr, grad norm, tokens/s, balance losses)."""
        self.watch.step(**metrics)

    def on_eval(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        """Record evaluation metrics under `eval/`."""
        for name, value in metrics.items():
            self.watch.log(name if name.startswith("eval") else f"eval/{name}", value, step=max(step - 1, 0))


def _slow_down(model: Any, seconds: float) -> None:
    def sleep(*_: Any) -> None:
        time.sleep(seconds)
    model.register_forward_pre_hook(sleep)


def _planted_slow_rank(slow_rank: int | None, slow_s: float) -> dict:
    """What a planted slow rank adds to the run's config: the fault and what `inspector summary`
    has to find (the fault suite in tests/faults reads `expected_findings`)."""
    if slow_rank is None:
        return {}
    return {"planted_faults": {"slow_rank": {"rank": slow_rank, "forward_sleep_s": slow_s}},
            "expected_findings": [{"check": "straggler", "fault": "a straggler rank", "rank": slow_rank}]}


def default_run_dir() -> Path:
    """runs/demo-<date>-<time> under the current directory."""
    return Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")


def train_and_record(*, config: str, steps: int, out: Path, seed: int = 0, probes: str = "default",
                     batch_size: int | None = None, seq_len: int | None = None, slow_rank: int | None = None,
                     slow_s: float = 0.05, progress: bool = True) -> None:
    """Train engine config `config` for `steps` steps with `probes` recording into `out` (this rank);
    rank 0 prints the start-up stages."""
    log = StartupLog(enabled=int(os.environ.get("RANK", "0")) == 0)
    log.stage("loading torch and the engine")
    from inspector_engine.config import get_config
    from inspector_engine.training import TrainConfig, Trainer

    model_cfg = get_config(config)
    train_cfg = TrainConfig(steps=steps, seed=seed, progress=progress, eval_every=max(10, steps // 10))
    if batch_size:
        train_cfg.batch_size = batch_size
    if seq_len:
        train_cfg.seq_len = seq_len
    log.stage(f"building the model ({config}) and its optimizer, reading the training data")
    trainer = Trainer(model_cfg, train_cfg)
    if progress and trainer.dist.rank != 0:
        trainer.config.progress = False
    if slow_rank is not None and trainer.dist.rank == slow_rank:
        _slow_down(trainer.model, slow_s)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    log.stage(f"attaching the probes ({probes}) to the model's {n_params:,} parameters")
    watch = inspector.watch(trainer.model, out, optimizer=trainer.optimizer, probes=probes, name=out.name,
                            config={"model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
                                    "engine_config": config, **_planted_slow_rank(slow_rank, slow_s)})
    trainer.callbacks.append(RecordingCallback(watch))
    log.stage(f"training {steps} steps; the first is the slowest (one-time set-up)")
    try:
        trainer.run()
    finally:
        watch.close()
        trainer.close()


def run_demo(*, config: str = "tiny", steps: int = 300, out: str | None = None, seed: int = 0, ranks: int = 1,
             slow_rank: int | None = None, probes: str = "default", batch_size: int | None = None,
             seq_len: int | None = None, progress: bool = True, dash: bool = False, port: int = 8050,
             open_browser: bool = True) -> int:
    """Train (on `ranks` processes), record into `out`, and print where the run is; returns an exit code.

    With `dash`, the dashboard serves the run live on 127.0.0.1:`port` while training and, when run
    from a terminal, keeps serving after training ends until Ctrl-C.
    """
    run_dir = Path(out) if out else default_run_dir()
    print(f"inspector demo: training engine config {config!r} for {steps} steps on {ranks} rank(s), "
          f"recording to {run_dir}", flush=True)
    log = StartupLog()
    if dash:
        log.stage("starting the dashboard")
    server = _start_dashboard(run_dir, port, open_browser) if dash else None
    try:
        if ranks > 1:
            log.stage(f"starting {ranks} training processes under torchrun")
            code = _launch_torchrun(ranks, [
                "--config", config, "--steps", str(steps), "--out", str(run_dir), "--seed", str(seed),
                "--probes", probes, *(["--slow-rank", str(slow_rank)] if slow_rank is not None else []),
                *(["--batch-size", str(batch_size)] if batch_size else []),
                *(["--seq-len", str(seq_len)] if seq_len else []), *([] if progress else ["--no-progress"])])
            if code != 0:
                print(f"inspector demo: torchrun exited with status {code}", file=sys.stderr)
                return code
        else:
            train_and_record(config=config, steps=steps, out=run_dir, seed=seed, probes=probes,
                             batch_size=batch_size, seq_len=seq_len, slow_rank=slow_rank, progress=progress)
    except KeyboardInterrupt:
        print("inspector demo: interrupted; the run so far is kept")
    _print_summary(run_dir)
    if server is not None:
        _serve_until_interrupted(server, run_dir)
    return 0


def _start_dashboard(run_dir: Path, port: int, open_browser: bool) -> Any:
    """Serve the dashboard over `run_dir` (which may not exist yet) on a daemon thread; print its URL."""
    import webbrowser

    from inspector.dash_app.server import serve_in_thread

    try:
        server, _thread, url = serve_in_thread(run_dir, host="127.0.0.1", port=port)
    except OSError as exc:      # port taken: training matters more than the dashboard
        print(f"inspector demo: dashboard not started ({exc}); try --port, or `inspector dash {run_dir}` later",
              file=sys.stderr, flush=True)
        return None
    after = "" if _interactive() else "; it stops when training ends, as this is not a terminal"
    print(f"inspector demo: dashboard at {url} (live while training{after})", flush=True)
    if open_browser:
        try:
            webbrowser.open(url)
        except Exception:
            pass
    return server


def _interactive() -> bool:
    """Someone at a terminal can press Ctrl-C and sees the output (stdin and stdout are both TTYs)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def _serve_until_interrupted(server: Any, run_dir: Path) -> None:
    if not _interactive():       # a script or a pipe: nobody would stop it, so stop and say how to reopen
        server.shutdown()
        print(f"inspector demo: training done; dashboard stopped (not a terminal). Reopen it with: "
              f"{_inspector_command()} dash {run_dir}", flush=True)
        return
    print("inspector demo: training done; the dashboard keeps serving the run (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


def _launch_torchrun(ranks: int, worker_args: Sequence[str]) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "inspector.demo", *worker_args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           T0_ENV: str(_demo_start_time())}
    return subprocess.call(cmd, env=env)


def _print_summary(run_dir: Path) -> None:
    reader = inspector.open_run(run_dir)
    losses = reader.to_pandas("scalar", names=["loss"], ranks=[0])
    loss = losses["value"]
    anomalies = reader.to_pandas("anomaly")
    # Steps trained are the steps with a loss: system samples and the last heartbeat carry the
    # step counter after the last step ends, which would read "61 steps" for `--steps 60`.
    print(f"inspector demo: {reader.status()} run, {losses['step'].nunique()} steps, {len(reader.ranks)} rank(s), "
          f"{human_bytes(reader.size_bytes())} in {run_dir}")
    if len(loss) >= 2:
        print(f"inspector demo: loss {loss.iloc[0]:.3f} -> {loss.iloc[-1]:.3f}; {len(anomalies)} anomaly record(s)")
    print(f"inspect it with: {_inspector_command()} info {run_dir}")


def _inspector_command() -> str:
    """How to call `inspector` from here: the venv's script when it is not on PATH."""
    script = Path(sys.executable).with_name("inspector")
    return "inspector" if shutil.which("inspector") == str(script) or not script.exists() else str(script)


def main(argv: Sequence[str] | None = None) -> int:
    """Worker entry point (`python -m inspector.demo`), as started by torchrun for each rank."""
    p = argparse.ArgumentParser(prog="python -m inspector.demo")
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probes", default="default")
    p.add_argument("--slow-rank", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    train_and_record(config=a.config, steps=a.steps, out=Path(a.out), seed=a.seed, probes=a.probes,
                     batch_size=a.batch_size, seq_len=a.seq_len, slow_rank=a.slow_rank, progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
