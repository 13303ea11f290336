"""The watchdog's hooks under torch.compile: no graph break, graph or recompile added (dynamo's own
counters, compared with the unwatched run's), and the root's phases still tracked at the compiled
region's boundary (forward, then backward when the gradient reaches the model's output)."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch._dynamo.utils import counters

import inspector
from tests.test_compile_breaks import Tiny, _counts


def _run(mode: str, run_dir) -> tuple[dict[str, int], list[str]]:
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = None
    if mode == "none":
        run = torch.compile(model)
    elif mode == "before":
        w = inspector.watch(model, run_dir, optimizer=opt, probes="none", hang_after_s=None)
        run = torch.compile(model)
    elif mode == "after":
        run = torch.compile(model)
        w = inspector.watch(run, run_dir, optimizer=opt, probes="none", hang_after_s=None)
    else:
        model.compile()
        w, run = inspector.watch(model, run_dir, optimizer=opt, probes="none", hang_after_s=None), model
    phases = []
    gen = torch.Generator().manual_seed(1)
    try:
        for _ in range(3):
            x_BT = torch.randint(0, 32, (2, 8), generator=gen)
            out = run(x_BT)
            if w is not None:
                phases.append(w.progress.phase)
                out.register_hook(lambda g: phases.append(w.progress.phase))  # runs after ours
            F.cross_entropy(out.flatten(0, 1), x_BT.flatten()).backward()
            opt.step()
            opt.zero_grad()
            if w is not None:
                w.step()
                phases.append(f"step {w.progress.step}")
    finally:
        if w is not None:
            w.close()
    return _counts(), phases


@pytest.mark.parametrize("mode", ["before", "after", "method"])
def test_no_graph_break_and_phases_at_the_boundary(tmp_path, mode: str) -> None:
    unwatched, _ = _run("none", tmp_path / "none")
    assert unwatched == {"graphs": 1, "breaks": 0, "recompiles": 0}
    watched, phases = _run(mode, tmp_path / mode)
    assert watched == unwatched, dict(counters["graph_break"])
    assert phases == ["user", "backward", "step 1", "user", "backward", "step 2", "user", "backward", "step 3"]
