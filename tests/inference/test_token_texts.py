"""Per-token text labels of recorded requests: what each token adds to the decoded text (as a
streaming detokenizer prints it), decoded on the writer thread; a failing tokenizer costs the labels
only. Oracle: the UTF-8 text the test encoded itself."""
from __future__ import annotations

from pathlib import Path

import torch

import inspector
from inspector.inference.requests import token_texts
from inspector_engine.config import get_config
from inspector_engine.inference import BatchScheduler
from inspector_engine.model import Transformer
from inspector_engine.tokenizer import ByteTokenizer

TEXT = "héllo wörld €5"


def test_a_multibyte_character_is_carried_by_the_byte_that_completes_it() -> None:
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    texts = token_texts(tok, ids)
    assert len(texts) == len(ids)
    assert "".join(t for t in texts if t != "\ufffd") == TEXT          # nothing lost, nothing doubled
    assert texts[ids.index(0xA9)] == "é" and texts[len(ids) - 2] == "€"  # é = c3 a9, € = e2 82 ac
    assert texts[ids.index(0xC3)] == "\ufffd"                           # the lead byte alone


class Leading:
    """A SentencePiece-like tokenizer: a token decoded alone loses its leading space."""

    words = ["▁to", "▁be", ",", "▁or", "▁not"]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.words[i] for i in ids).replace("▁", " ").lstrip(" ")


def test_a_word_token_keeps_its_leading_space() -> None:
    assert token_texts(Leading(), [0, 1, 2, 3, 4, 0, 1]) == ["to", " be", ",", " or", " not", " to", " be"]


class Broken(ByteTokenizer):
    def decode(self, ids):  # type: ignore[override]
        raise RuntimeError("tokenizer gone")


def _serve(tmp_path: Path, tokenizer: object) -> tuple[list, object]:
    torch.manual_seed(0)
    model = Transformer(get_config("debug")).eval()
    sched = BatchScheduler(model, max_batch_size=2, max_batch_tokens=64)
    w = inspector.watch(model, tmp_path / "run", mode="inference", probes=[], tokenizer=tokenizer, hang_after_s=None)
    driver = w.observe(sched)
    sched.submit(ByteTokenizer().encode(TEXT), 4)
    done = sched.run()
    driver.remove()
    off = w.inference.switched_off
    w.close()
    rows = inspector.open_run(tmp_path / "run").to_pandas("inference_request")
    return done, (rows, off)


def test_recorded_requests_carry_the_labels(tmp_path: Path) -> None:
    done, (rows, off) = _serve(tmp_path, ByteTokenizer())
    row = rows.iloc[0]
    assert off is None and list(row["prompt_ids"]) == ByteTokenizer().encode(TEXT)
    assert "".join(t for t in row["prompt_text"] if t != "\ufffd") == TEXT
    assert len(row["output_text"]) == len(done[0].output)


def test_a_failing_tokenizer_costs_the_labels_only(tmp_path: Path) -> None:
    done, (rows, off) = _serve(tmp_path, Broken())
    row = rows.iloc[0]
    assert off is None                                   # the probe goes on
    assert row["prompt_text"] is None and row["output_text"] is None
    assert list(row["output_ids"]) == done[0].output and row["finished_reason"] == done[0].finish_reason
