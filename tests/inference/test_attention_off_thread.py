"""Under an inference watch on CPU with torch on one intra-op thread, decode attention is summarised
on the Recorder's writer thread (`attention.batched.LazySummary`), never on the serving thread; the
records it fills hold the numbers an eager summary of the same captures gives; a summary that fails
there switches the attention probe off with one warning while generation and the other records go
on. With more intra-op threads the serving thread summarises (a torch op on the writer thread would
start a thread pool of its own)."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

import inspector
from inspector.probes.attention import batched
from inspector.store.reader import RunReader
from inspector_engine.config import get_config
from inspector_engine.inference import BatchScheduler, SamplingParams
from inspector_engine.model import Transformer


@pytest.fixture
def threads() -> Iterator[None]:
    """Restores torch's intra-op thread count after the test changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _serve(run: Path) -> tuple[list, "inspector.Watch"]:
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    sched = BatchScheduler(model, max_batch_size=2, max_batch_tokens=128)
    w = inspector.watch(model, run, mode="inference", every={"attention": 2}, hang_after_s=None)
    w.observe(sched)
    g = torch.Generator().manual_seed(2)
    for n in (9, 6):
        sched.submit(torch.randint(0, model.cfg.vocab_size, (n,), generator=g).tolist(), 6,
                     SamplingParams(temperature=0.0))
    done = sched.run()
    w.close()
    return done, w


def _spy_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The thread of every lazy summary."""
    seen: list[str] = []
    eager = batched.summarise_together

    def spy(items, scale, vis, max_rows):  # type: ignore[no-untyped-def]
        got = eager(items, scale, vis, max_rows)
        seen.append(threading.current_thread().name)
        return got

    monkeypatch.setattr(batched, "summarise_together", spy)
    return seen


def test_decode_attention_is_summarised_on_the_writer_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             threads: None) -> None:
    torch.set_num_threads(1)
    seen = _spy_threads(monkeypatch)
    done, _ = _serve(tmp_path / "run")
    assert len(done) == 2
    assert seen and set(seen) == {"inspector-writer-0"}
    reader = RunReader(tmp_path / "run")
    stats = reader.to_pandas("attention_stats")
    decode_steps = sorted(set(stats["step"]) - {0})
    assert decode_steps, "no decode iteration was recorded"
    for step in decode_steps:
        rows = stats[stats["step"] == step]
        assert len(rows) == 2 * 4                                  # debug config: layers × heads
        assert rows["entropy"].between(0.0, np.log(rows["keys"].astype(float)) + 1e-6).all()
        probs, meta = reader.fetch("attention_map", step=step, layer=0)
        p = probs.astype(np.float64)
        want = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(-1).mean(-1)
        got = rows[rows["layer"] == 0].sort_values("head")["entropy"].to_numpy()
        np.testing.assert_allclose(got, want, atol=3e-3)         # the map is stored in fp16


def test_with_several_intra_op_threads_the_serving_thread_summarises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      threads: None) -> None:
    torch.set_num_threads(2)
    seen = _spy_threads(monkeypatch)
    done, _ = _serve(tmp_path / "run")
    assert len(done) == 2 and seen == []                  # the writer thread ran no summary
    stats = RunReader(tmp_path / "run").to_pandas("attention_stats")
    assert (stats["step"] > 0).any()                        # the serving thread recorded decode rows


def test_a_failing_writer_thread_summary_switches_attention_off_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture,
                                                                     threads: None) -> None:
    torch.set_num_threads(1)

    def broken(items, scale, vis, max_rows):  # type: ignore[no-untyped-def]
        raise RuntimeError("summary broke")

    monkeypatch.setattr(batched, "summarise_together", broken)
    with caplog.at_level(logging.WARNING, logger="inspector"):
        done, w = _serve(tmp_path / "run")
    assert [len(r.output) for r in done] == [6, 6]
    warned = [r for r in caplog.records if "attention probe switched off" in r.getMessage()]
    assert len(warned) == 1 and "summary broke" in warned[0].getMessage()
    reader = RunReader(tmp_path / "run")
    assert len(reader.to_pandas("inference_request")) == 2              # the other records are all there
    assert len(reader.to_pandas("inference_iteration")) > 0
    anomalies = reader.to_pandas("anomaly")
    assert (anomalies["kind"] == "probe_error").sum() == 1
