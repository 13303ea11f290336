"""One rank of a simulated expert-parallel job (torchrun, gloo, CPU): the engine's debug model, each
rank routing its own tokens (different data and batch sizes per rank), watched with the experts probe
every step. The worker writes what its routers chose, per step and router, as the test's oracle.

    python -m torch.distributed.run --standalone --nproc_per_node=3 tests/ep_worker.py OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import inspector  # noqa: E402
from inspector_engine.config import get_config  # noqa: E402
from inspector_engine.model import Transformer  # noqa: E402

STEPS = 4


def main(out: Path) -> None:
    """Train a few steps watched; save {step: {router: bincount}} of this rank's routing."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = Transformer(get_config("debug"))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    step = [0]
    chosen: dict[int, dict[str, list[int]]] = {}
    for name, module in model.named_modules():
        if type(module).__name__ == "Router":
            def record(mod: Any, args: Any, result: Any, name: str = name) -> None:
                indices = result[2].detach().numpy().ravel()
                per = chosen.setdefault(step[0], {})
                per[name] = np.bincount(indices, minlength=result[0].shape[1]).tolist()
            module.register_forward_hook(record)
    watch = inspector.watch(model, out / "run", optimizer=opt, probes=["experts"], every={"experts": 1},
                            hang_after_s=None)
    g = torch.Generator().manual_seed(100 + rank)
    try:
        for _ in range(STEPS):
            x_BT = torch.randint(0, 256, (2 + rank, 16 + 8 * rank), generator=g)
            loss = model(x_BT).float().logsumexp(-1).mean()
            loss.backward()
            for p in model.parameters():            # data-parallel gradients: the same weights on every rank
                if p.grad is not None:
                    dist.all_reduce(p.grad)
            opt.step()
            opt.zero_grad()
            watch.step(loss=loss.detach())
            step[0] += 1
    finally:
        watch.close()
    (out / f"routed-rank{rank}.json").write_text(json.dumps(chosen))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
