"""One training step's `timing` rows as the timing probe and the collective tracker write them, for
straggler tests that build runs through the real Recorder."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from inspector.store.recorder import Recorder

NAMES = ["model", "model", "optimizer", "data", "step", "step", "collectives"]
PHASES = ["forward", "backward", "optimizer", "data", "other", "total", "comm_wait"]


def submit_step(rec: Recorder, step: int, *, fwd: float, bwd: float, opt: float, data: float, other: float,
                comm: float, cpu_waits: Mapping[str, float] | None = None) -> None:
    """The step's section rows (total = their sum), its communication wait and, with `cpu_waits`
    ({"forward": ms, ..., "": whole step}), the timing probe's CPU-wait rows."""
    names, phases = list(NAMES), list(PHASES)
    ms = [fwd, bwd, opt, data, other, fwd + bwd + opt + data + other, comm]
    for section, waited in (cpu_waits or {}).items():
        names.append("cpu_wait")
        phases.append(f"cpu_wait_{section}" if section else "cpu_wait")
        ms.append(waited)
    rec.submit("timing", {"name": names, "phase": phases, "ms": ms}, len(names), step=step)


def flagged(path: Path) -> dict[int, str]:
    """The straggler reason of every flagged rank of the run at `path`."""
    from inspector.views import ranks
    from inspector.views.live import open_live

    return {r: why for r, why in ranks.straggler_reasons(open_live(path)).items() if why}
