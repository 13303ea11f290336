"""Per-request latency bookkeeping, recorded as `inference_request` rows when a request finishes.

A driver (the engine scheduler's listener, the HF streamer) tells the book when a request arrives,
when its prefill starts, when each output token is accepted and when it finishes. Times come from
one monotonic clock (`time.perf_counter` unless given), so the latencies are those the caller
would measure around the same calls; `arrival_time` is wall-clock epoch seconds, for display.

Metric names follow vLLM's request metrics: `time_to_first_token_s` (arrival → first token),
`time_per_output_token_s` (mean gap after the first token: (last − first) / (n − 1)),
`inter_token_latency_p50_s` / `_p95_s` (percentiles of those gaps), `e2e_request_latency_s`,
`queue_time_s` (arrival → prefill starts) and `finished_reason` ("stop", "length", "abort" for a
request still running when the watch closed).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from inspector.schema import INFERENCE_REQUEST

ABORT = "abort"


@dataclass
class _Request:
    """One request in flight."""

    arrival: float
    arrival_epoch: float
    prompt_ids: list[int]
    started: float | None = None
    token_times: list[float] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)


class RequestBook:
    """Requests in flight, and their rows once finished; see the module docstring.

    `tokenizer`: anything with `decode(list[int]) -> str`, used for per-token text labels.
    `tokens_every`: keep token ids and text for every n-th request (0: none).
    """

    def __init__(self, submit: Callable[[dict[str, Any]], Any], *, tokenizer: Any = None,
                 tokens_every: int = 1, clock: Callable[[], float] = time.perf_counter) -> None:
        self._submit = submit
        self.tokenizer = tokenizer
        self.tokens_every = tokens_every
        self.clock = clock
        self.open: dict[int, _Request] = {}
        self.finished = 0
        self._decode_failed = False

    def arrive(self, rid: int, prompt_ids: Sequence[int], at: float | None = None) -> None:
        """Request `rid` was submitted with `prompt_ids`."""
        self.open[rid] = _Request(self.clock() if at is None else at, time.time(), [int(t) for t in prompt_ids])

    def start(self, rid: int, at: float | None = None) -> None:
        """Its prefill starts now (it left the waiting queue)."""
        req = self.open.get(rid)
        if req is not None and req.started is None:
            req.started = self.clock() if at is None else at

    def token(self, rid: int, token_id: int, at: float | None = None) -> None:
        """It accepted output token `token_id` now."""
        self.tokens(((rid, token_id),), self.clock() if at is None else at)

    def tokens(self, accepted: Iterable[tuple[int, int]], at: float) -> None:
        """Every (request, token id) of `accepted` accepted its token at `at` (one forward's batch)."""
        open_ = self.open
        for rid, token_id in accepted:
            req = open_.get(rid)
            if req is not None:
                req.token_times.append(at)
                req.output_ids.append(int(token_id))

    def finish(self, rid: int, reason: str | None) -> None:
        """It is done (`reason`: "stop", "length", …): its row is recorded."""
        req = self.open.pop(rid, None)
        if req is None:
            return
        self.finished += 1
        self._submit(self._row(rid, req, reason))

    def close(self) -> None:
        """Record every request still open as aborted."""
        for rid in list(self.open):
            self.finish(rid, ABORT)

    def _row(self, rid: int, req: _Request, reason: str | None) -> dict[str, Any]:
        times = [t - req.arrival for t in req.token_times]
        gaps = sorted(b - a for a, b in zip(times, times[1:]))
        keep = self.tokens_every > 0 and rid % self.tokens_every == 0
        row: dict[str, Any] = {
            "request_id": rid,
            "prompt_tokens": len(req.prompt_ids),
            "generation_tokens": len(req.output_ids),
            "arrival_time": req.arrival_epoch,
            "queue_time_s": None if req.started is None else req.started - req.arrival,
            "time_to_first_token_s": times[0] if times else None,
            "time_per_output_token_s": (times[-1] - times[0]) / len(gaps) if gaps else None,
            "inter_token_latency_p50_s": percentile(gaps, 50.0) if gaps else None,
            "inter_token_latency_p95_s": percentile(gaps, 95.0) if gaps else None,
            "e2e_request_latency_s": times[-1] if times else None,
            "finished_reason": reason,
            "token_times_s": np.asarray(times, dtype=np.float64),
            "prompt_ids": req.prompt_ids if keep else None,
            "output_ids": req.output_ids if keep else None,
            "prompt_text": self._texts(req.prompt_ids) if keep else None,
            "output_text": self._texts(req.output_ids) if keep else None,
        }
        return row

    def _texts(self, ids: list[int]) -> "TokenTexts | None":
        """Each token's own text, decoded later on the writer thread (None without a tokenizer, or
        once decoding failed)."""
        if self.tokenizer is None or self._decode_failed:
            return None
        return TokenTexts(self, ids)


class TokenTexts:
    """A request's per-token texts, decoded when the record is written (`resolve`, on the writer
    thread: decoding a long output twice per token stays off the serving loop)."""

    __slots__ = ("book", "ids")

    def __init__(self, book: RequestBook, ids: list[int]) -> None:
        self.book = book
        self.ids = ids

    def resolve(self) -> list[str] | None:
        """The texts; None (and no more decoding for this book) when the tokenizer fails."""
        if self.book._decode_failed:
            return None
        try:
            return token_texts(self.book.tokenizer, self.ids)
        except Exception:  # noqa: BLE001 - labels are a nicety; ids are kept
            self.book._decode_failed = True
            return None


def token_texts(tokenizer: Any, ids: Sequence[int], *, context: int = 8) -> list[str]:
    """Each token's own text: what it adds to the decoded text of the (up to `context`) tokens before
    it, as a streaming detokenizer prints it. So a SentencePiece token keeps its leading space, and
    the byte that completes a multi-byte character carries the character; a token that leaves a
    character unfinished gets its own decode (usually "\ufffd")."""
    out: list[str] = []
    ids = [int(t) for t in ids]
    for i, token in enumerate(ids):
        lo = max(0, i - context)
        before = str(tokenizer.decode(ids[lo:i])).rstrip("\ufffd") if i > lo else ""
        upto = str(tokenizer.decode(ids[lo:i + 1]))
        if upto.startswith(before) and not upto.endswith("\ufffd") and len(upto) > len(before):
            out.append(upto[len(before):])
        else:
            out.append(str(tokenizer.decode([token])))
    return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The `q`-th percentile of ascending `sorted_values`, interpolated linearly (numpy's default)."""
    at = (len(sorted_values) - 1) * q / 100.0
    lo = int(at)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (at - lo)


def record_request(recorder: Any, step: Callable[[], int]) -> Callable[[dict[str, Any]], Any]:
    """A `submit` for `RequestBook` that writes `inference_request` rows through `recorder` at `step()`."""
    return lambda row: recorder.submit(INFERENCE_REQUEST, row, 1, step())
