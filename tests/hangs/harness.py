"""Start a seeded-fault job (`tests/hangs/worker.py` under torchrun) and clean every process it made.

    with start_job("loader_sleep", tmp_path / "run") as job:
        hb = job.wait_for(lambda: job.heartbeat(1) if job.dumped(1) else None, timeout=60)

torchrun (the elastic agent) runs in a new session of its own; it starts each worker in a new session
too, so one process-group kill is not enough: `Job.kill()` SIGKILLs every worker's group first (found
as the agent's children, and from the ranks' heartbeats in case the agent died first), then the
agent's, reaps the agent, and waits until no group is left (`os.killpg(pgid, 0)` raises).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from inspector.store.format import rank_dir_name
from inspector.store.heartbeat_format import HEARTBEAT_FILE, Heartbeat

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(entry))
    return out


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Job:
    """A running torchrun job: its agent process, run directory and log; a context manager that kills it."""

    def __init__(self, proc: subprocess.Popen, run_dir: Path, log_path: Path, nproc: int) -> None:
        self.proc = proc
        self.run_dir = run_dir
        self.log_path = log_path
        self.nproc = nproc
        self.pgids: set[int] = {proc.pid}   # the agent's session; workers' are added as they are seen
        self._pids: set[int] = set()

    # ---- looking ------------------------------------------------------------------------------

    def alive(self) -> bool:
        """Whether the torchrun agent still runs."""
        return self.proc.poll() is None

    def worker_pids(self) -> list[int]:
        """The workers' pids (the agent's children, and those the heartbeats name), remembered."""
        if self.alive():
            self._pids.update(_children(self.proc.pid))
        for rank in range(self.nproc):
            hb = self.heartbeat(rank)
            if hb is not None:
                self._pids.add(hb.pid)
        for pid in self._pids:
            try:
                self.pgids.add(os.getpgid(pid))
            except ProcessLookupError:
                pass
        return sorted(self._pids)

    def rank_dir(self, rank: int) -> Path:
        """The rank's directory in the run."""
        return self.run_dir / rank_dir_name(rank)

    def heartbeat(self, rank: int) -> Heartbeat | None:
        """The rank's heartbeat.json, or None while it is missing (never half: it is replaced atomically)."""
        try:
            return Heartbeat.from_json(json.loads((self.rank_dir(rank) / HEARTBEAT_FILE).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def dumps(self, rank: int) -> list[Path]:
        """The rank's stack dump files, oldest first."""
        return sorted(self.rank_dir(rank).glob("stacks-*.txt"))

    def log_tail(self, n: int = 40) -> str:
        """The last `n` lines of the job's combined output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_for(self, predicate: Callable[[], T], timeout: float, interval: float = 0.25, what: str = "") -> T:
        """Poll `predicate` until it returns something truthy (returned); TimeoutError with the log after `timeout` s."""
        end = time.monotonic() + timeout
        while True:
            self.worker_pids()
            value = predicate()
            if value:
                return value
            if time.monotonic() >= end:
                raise TimeoutError(f"{what or predicate} not true after {timeout:.0f} s; job log:\n{self.log_tail()}")
            time.sleep(interval)

    def wait_heartbeat(self, rank: int, predicate: Callable[[Heartbeat], Any], timeout: float) -> Heartbeat:
        """The first heartbeat of `rank` for which `predicate` is true."""
        def check() -> Heartbeat | None:
            hb = self.heartbeat(rank)
            return hb if hb is not None and predicate(hb) else None
        return self.wait_for(check, timeout, what=f"rank {rank}'s heartbeat condition")

    def wait_exit(self, timeout: float) -> int:
        """The agent's exit code, once it exits by itself."""
        return self.wait_for(lambda: self.proc.poll() is not None and (self.proc.returncode,), timeout,
                             what="the job's exit")[0]

    # ---- cleaning -----------------------------------------------------------------------------

    def kill(self, timeout: float = 20.0) -> None:
        """SIGKILL the workers' groups, then the agent's; reap; wait until no group is left."""
        self.worker_pids()
        for pgid in sorted(self.pgids - {self.proc.pid}):
            _killpg(pgid)
        _killpg(self.proc.pid)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        end = time.monotonic() + timeout
        while any(group_alive(g) for g in self.pgids) and time.monotonic() < end:
            time.sleep(0.1)

    def left(self) -> list[int]:
        """Process groups of this job still alive (empty after `kill`)."""
        return [g for g in sorted(self.pgids) if group_alive(g)]

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start_job(fault: str, run_dir: Path, *, nproc: int = 2, rank: int = 1, step: int = 5, steps: int | None = None,
              probes: str = "default", hang_after_s: float = 5.0, heartbeat_s: float = 1.0,
              extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Job:
    """Start `tests.hangs.worker` with fault `fault` on rank `rank` at step `step` under
    `torchrun --standalone --nproc_per_node nproc` (gloo, CPU), writing into `run_dir`.

    `steps` defaults to `step + 5` (a hang never gets there). The job's output goes to
    `run_dir.parent / (run_dir.name + ".log")`. Use as a context manager: leaving it kills everything.
    """
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = run_dir.parent / f"{run_dir.name}.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "--max-restarts", "0", "-m", "tests.hangs.worker", "--run-dir", str(run_dir), "--fault", fault,
           "--rank", str(rank), "--step", str(step), "--steps", str(step + 5 if steps is None else steps),
           "--probes", probes, "--hang-after-s", str(hang_after_s), "--heartbeat-s", str(heartbeat_s), *extra_args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]), **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True)
    return Job(proc, run_dir, log_path, nproc)
