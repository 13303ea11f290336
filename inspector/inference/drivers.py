"""Drivers: what tells the `inference` probe which requests a serving loop runs.

- `SchedulerDriver`: a listener on a scheduler with `add_listener(fn)` (the engine's
  `BatchScheduler`; found by duck typing). Its events give request arrival, prefill start, each
  accepted token, finish and reason, the batch row order of each decode, and the end of each
  iteration with the queue lengths.
- `GenerateStreamer`: a Hugging Face streamer (`put` / `end`, as `BaseStreamer`) for `generate()`.
  Its first `put` is the prompt batch [B, T] (leading pad tokens stripped per row), every later
  `put` the tokens [B] one decoding step produced, which ends that iteration; a row that emits an
  end-of-sequence token is finished ("stop"); rows still open at `end()` stopped at the length limit.

Both call back only through the probe's `guard`, so an error switches the probe off, never the loop.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import torch

from inspector.inference.probe import InferenceProbe
from inspector.probes.experts import DECODE, PREFILL


class SchedulerDriver:
    """Listens to a scheduler's events (see the module docstring); `remove()` stops listening."""

    def __init__(self, probe: InferenceProbe, scheduler: Any) -> None:
        if not callable(getattr(scheduler, "add_listener", None)):
            raise TypeError(f"{type(scheduler).__name__} has no add_listener(fn): not a scheduler the Inspector can observe")
        self.probe = probe
        self._finished_now = 0
        budget = getattr(scheduler, "max_batch_tokens", None)
        if isinstance(budget, int) and budget > 0:
            probe.token_budget = budget
        probe.drivers += 1
        self._remove: Callable[[], Any] | None = scheduler.add_listener(probe.guard(self._on_event, "scheduler listener"))

    def remove(self) -> None:
        """Stop listening."""
        if self._remove is not None:
            self._remove()
            self._remove = None
            self.probe.drivers -= 1

    def _on_event(self, event: str, obj: Any) -> None:
        book, meter = self.probe.book, self.probe.meter
        if book is None or meter is None:
            return
        if event == "submitted":
            book.arrive(obj.id, obj.prompt)
        elif event == "prefill":
            book.start(obj.id)
            meter.expect(PREFILL, obj.id, 0)
        elif event == "token":
            book.token(obj.id, obj.output[-1])
            if obj.finished:
                book.finish(obj.id, obj.finish_reason)
                self._finished_now += 1
        elif event == "decode":
            first = obj[0] if obj else None
            meter.expect(DECODE, None if first is None else first.id,
                         None if first is None else len(first.prompt) + len(first.output) - 1)
        elif event == "iteration":
            finished, self._finished_now = self._finished_now, 0
            self.probe.end_iteration(running=len(obj.running), waiting=len(obj.waiting), finished=finished)


_request_ids = itertools.count()


def _as_ids(value: Any) -> list[int]:
    if isinstance(value, (list, tuple, set)):
        return [int(v) for v in value]
    return [] if value is None else [int(value)]


class GenerateStreamer:
    """A Hugging Face `generate(streamer=...)` streamer feeding the inference probe; see the module docstring.

    `eos_token_ids` end a row ("stop"); `pad_token_id` is stripped from the left of each prompt.
    Request ids continue across `generate()` calls in one process.
    """

    def __init__(self, probe: InferenceProbe, *, eos_token_ids: Sequence[int] | int | None = None,
                 pad_token_id: int | None = None) -> None:
        self.probe = probe
        self.eos = set(_as_ids(eos_token_ids))
        self.pad = pad_token_id
        self.rows: list[int] = []
        self.lengths: list[int] = []
        self.open: list[bool] = []
        self._active = False
        self._put = probe.guard(self._on_put, "generate streamer put")
        self._end = probe.guard(self._on_end, "generate streamer end")

    def put(self, value: torch.Tensor) -> None:
        """Called by `generate()`: the prompt first, then each step's tokens."""
        self._put(value)

    def end(self) -> None:
        """Called by `generate()` when it is done."""
        self._end()

    def _on_put(self, value: Any) -> None:
        book, meter = self.probe.book, self.probe.meter
        if book is None or meter is None:
            return
        ids = torch.as_tensor(value).detach().cpu()
        if not self._active:
            self._start(ids.reshape(1, -1) if ids.dim() == 1 else ids)
            return
        finished = 0
        for row, token in enumerate(ids.reshape(-1).tolist()):
            if row >= len(self.rows) or not self.open[row]:
                continue
            book.token(self.rows[row], token)
            self.lengths[row] += 1
            if token in self.eos:
                self.open[row] = False
                book.finish(self.rows[row], "stop")
                finished += 1
        running = sum(self.open)
        self.probe.end_iteration(running=running, waiting=0, finished=finished)
        if self.rows and self.open[0]:
            meter.expect(DECODE, self.rows[0], self.lengths[0] - 1)

    def _start(self, prompt_BT: torch.Tensor) -> None:
        book, meter = self.probe.book, self.probe.meter
        self._active = True
        self.probe.drivers += 1
        self.rows, self.lengths, self.open = [], [], []
        leads: list[int] = []
        for row in prompt_BT.tolist():
            lead = 0
            while self.pad is not None and lead < len(row) - 1 and row[lead] == self.pad:
                lead += 1
            rid = next(_request_ids)
            book.arrive(rid, row[lead:])
            book.start(rid)
            self.rows.append(rid)
            self.lengths.append(len(row) - lead)
            self.open.append(True)
            leads.append(lead)
        # row 0's first query is its first pad: negative positions are padding
        meter.expect(PREFILL, self.rows[0] if self.rows else None, -leads[0] if leads else 0)

    def _on_end(self) -> None:
        book = self.probe.book
        if self._active and book is not None:
            for rid, still in zip(self.rows, self.open):
                if still:
                    book.finish(rid, "length")
            self.probe.drivers -= 1
        self._active = False
        self.rows, self.lengths, self.open = [], [], []
