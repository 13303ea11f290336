"""Every probe on a 2-rank FSDP2 run (`fully_shard`, gloo, CPU), against an unsharded reference.

The workers (tests/fsdp2_worker.py) shard a float64 model and train it watched with every probe;
the oracle is the same model trained in this process on the concatenated global batch (the same
mean loss), its gradients and weights read with numpy: pre-clip and applied norms, clip
coefficient, per-parameter statistics, update ratios, gradient noise over the sampled steps and
per-block weight norms must match to 1e-6 relative on both ranks. The workers also count what
the Inspector asked of torch.distributed: one collective per step for the gradients probe, one
per sampled step for the weight-norm plugin, no whole-parameter gather, and state the size of
the local shard.
"""
from __future__ import annotations

import json
import socket
from typing import Any

import numpy as np
import pandas as pd
import pytest
import inspector
from inspector.plugins import load_plugins
from tests import fsdp2_worker as fw

WORLD = 2
RTOL = 1e-6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 2-rank watched run (probes="all"): its directory and each rank's census."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("fsdp2")
    run = root / "run"
    mp.spawn(fw.worker, args=(WORLD, str(run), f"tcp://127.0.0.1:{_free_port()}", "all"), nprocs=WORLD, join=True)
    load_plugins()  # the weight_norm kind, for the reader
    return {"run": inspector.open_run(run),
            "census": [json.loads((root / f"rank-{r}.json").read_text()) for r in range(WORLD)]}


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """The unsharded run, one process, the global batch: numpy copies of what the probes measure."""
    model = fw.build_model()
    opt = fw.make_optimizer(model)
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    steps: list[dict[str, Any]] = []
    for step in range(fw.STEPS):
        seen: dict[str, Any] = {}

        def after_backward() -> None:
            seen["pre"] = [p.grad.detach().numpy().copy() for p in params]

        def after_clip() -> None:
            seen["post"] = [p.grad.detach().numpy().copy() for p in params]
            seen["before"] = [p.detach().numpy().copy() for p in params]

        fw.train_step(model, opt, *fw.global_batch(step, WORLD), after_backward, after_clip)
        seen["after"] = [p.detach().numpy().copy() for p in params]
        steps.append(seen)
    return {"names": names, "steps": steps}


def _norm(arrays: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in arrays)))


def _scalar(run: Any, name: str, rank: int) -> np.ndarray:
    df = run.to_pandas("scalar", names=[name])
    return df[df["rank"] == rank].sort_values("step")["value"].to_numpy(np.float64)


@pytest.mark.multiproc
@pytest.mark.parametrize("rank", range(WORLD))
def test_gradient_norms_equal_the_unsharded_run(fsdp_run, reference, rank: int) -> None:
    run = fsdp_run["run"]
    pre = np.array([_norm(s["pre"]) for s in reference["steps"]])
    applied = np.array([_norm(s["post"]) for s in reference["steps"]])
    assert (pre > fw.CLIP).any() and (pre < fw.CLIP).any()  # clipped and unclipped steps both checked
    np.testing.assert_allclose(_scalar(run, "grad_norm/global", rank), pre, rtol=RTOL)
    np.testing.assert_allclose(_scalar(run, "grad_norm/applied", rank), applied, rtol=RTOL)
    np.testing.assert_allclose(_scalar(run, "grad_norm/clip_coef", rank), applied / pre, rtol=RTOL)


def _reference_stats(reference: dict[str, Any]) -> pd.DataFrame:
    rows = []
    sampled = list(range(0, fw.STEPS, fw.GRAD_EVERY))
    for step in sampled:
        s = reference["steps"][step]
        for i, name in enumerate(reference["names"]):
            g = s["post"][i]
            history = np.stack([reference["steps"][k]["post"][i] for k in sampled if k <= step])
            delta = s["after"][i] - s["before"][i]
            with np.errstate(divide="ignore"):  # a LayerNorm bias starts at zero: an infinite ratio, as recorded
                ratio = np.linalg.norm(delta) / np.linalg.norm(s["before"][i])
            rows.append({"step": step, "name": name, "norm": np.linalg.norm(g), "mean": g.mean(), "var": g.var(),
                         "max_abs": np.abs(g).max(), "zero_frac": np.mean(g == 0),
                         "update_ratio": ratio,
                         "var_over_steps": history.var(axis=0).mean()})
    return pd.DataFrame(rows).set_index(["step", "name"]).sort_index()


@pytest.mark.multiproc
@pytest.mark.parametrize("rank", range(WORLD))
def test_per_parameter_statistics_equal_the_unsharded_run(fsdp_run, reference, rank: int) -> None:
    expected = _reference_stats(reference)
    got = fsdp_run["run"].to_pandas("grad_stats")
    got = got[got["rank"] == rank].astype({"name": str}).set_index(["step", "name"]).sort_index()
    assert got.index.tolist() == expected.index.tolist()  # every parameter on every sampled step, by its own name
    assert expected.loc[(0, "head.weight"), "norm"] > 0  # rank 1 holds none of it: its rows come from rank 0
    for col in expected.columns:
        np.testing.assert_allclose(got[col].to_numpy(np.float64), expected[col].to_numpy(np.float64),
                                   rtol=RTOL, atol=1e-12, err_msg=col)


@pytest.mark.multiproc
def test_weight_norms_of_sharded_blocks_equal_the_unsharded_run(fsdp_run, reference) -> None:
    names = reference["names"]
    df = fsdp_run["run"].to_pandas("weight_norm")
    for rank in range(WORLD):
        mine = df[df["rank"] == rank]
        assert sorted(mine["step"].unique()) == list(range(0, fw.STEPS, fw.WEIGHT_EVERY))
        for row in mine.itertuples():
            after = reference["steps"][row.step]["after"]
            block = [a for n, a in zip(names, after) if n.startswith(f"{row.name}.")]
            norm = _norm(block)
            np.testing.assert_allclose(row.norm, norm, rtol=RTOL)
            np.testing.assert_allclose(row.rms, norm / np.sqrt(sum(a.size for a in block)), rtol=RTOL)


@pytest.mark.multiproc
def test_every_probe_keeps_recording_under_fsdp2(fsdp_run) -> None:
    for census in fsdp_run["census"]:
        assert census["warnings"] == []
        assert not any("switched off" in why for why in census["not_applicable"].values())
        assert {"gradients", "weight_norm", "activations", "timing"} <= set(census["probes"])
    kinds = fsdp_run["run"].kinds()
    assert {"grad_stats", "weight_norm", "activation_stats", "timing"} <= set(kinds)
    assert fsdp_run["run"].to_pandas("anomaly").empty


@pytest.mark.multiproc
def test_one_small_collective_per_step_and_no_whole_parameter(fsdp_run) -> None:
    sampled = set(range(0, fw.STEPS, fw.GRAD_EVERY))
    for census in fsdp_run["census"]:
        assert census["gathers"] == []  # never DTensor.full_tensor()/redistribute() of a parameter
        by_probe: dict[str, list[tuple[int, str]]] = {"gradients": [], "weight_norm": []}
        for step, chain, op in census["collectives"]:
            probe = "weight_norm" if "inspector_plugins.weight_norm.probe" in chain else "gradients"
            assert "inspector.probes.gradients" in chain or probe == "weight_norm", chain
            by_probe[probe].append((step, op))
        assert by_probe["gradients"] == [(s, "all_gather_single" if s in sampled else "all_reduce")
                                         for s in range(fw.STEPS)]
        assert by_probe["weight_norm"] == [(s, "all_reduce") for s in range(0, fw.STEPS, fw.WEIGHT_EVERY)]


@pytest.mark.multiproc
def test_probe_state_grows_with_the_local_shard_only(fsdp_run) -> None:
    census = fsdp_run["census"]
    full = census[0]["full_numel"]
    assert sum(c["local_numel"] for c in census) == full
    for c in census:
        assert c["local_numel"] < full
        assert c["welford_numel"] == c["local_numel"]  # the per-element gradient-noise state: this rank's shard
