"""Drivers: what tells the `inference` probe which requests a serving loop runs.

- `SchedulerDriver`: a listener on a scheduler with `add_listener(fn)` (the engine's
  `BatchScheduler`; found by duck typing). Its events give request arrival, prefill start, the
  tokens each forward produced, finish and reason, the batch row order of each decode, and the end
  of each iteration with the queue lengths. From its first "prefill" or "decode" event on, the
  forwards are timed from those events to the "tokens" event that follows (the forward and the
  sampling of its tokens) and the model's forward hooks are off (the iteration meter's and the
  watchdog's: it reads a stalled forward's block from the stack instead); the KV-cache size is read
  from the scheduler's `cache` after each forward.
- `GenerateStreamer`: a Hugging Face streamer (`put` / `end`, as `BaseStreamer`) for `generate()`.
  Its first `put` is the prompt batch [B, T] (leading pad tokens stripped per row), every later
  `put` the tokens [B] one decoding step produced; that iteration ends when the next forward starts
  or at `end()`. A row that emits an end-of-sequence token is finished ("stop"), and so is one that
  gets the pad token (what `generate()` feeds a row its stopping criteria ended, as a stop string
  does: the pad is not counted); rows still open at `end()` stopped at the length limit (and count
  as finished in the last iteration).

Both pick, for each forward, the batch row whose attention is recorded (`RowChooser`: the request
shown least so far), so the attention views cover every request, not only batch row 0's.

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
        self.scheduler = scheduler
        self._driving = False
        self._finished_now = 0
        self._first_forward = True
        self.shown = RowChooser()
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
            if self._driving:
                self._driving = False
                self.probe.event_drivers -= 1
                if self.probe.event_drivers == 0:
                    self.probe.drive(False)

    def _drive(self) -> None:
        """Time the forwards from this scheduler's events from now on (the forward hooks go off)."""
        if not self._driving:
            self._driving = True
            self.probe.event_drivers += 1
            self.probe.drive(True)

    def _on_event(self, event: str, obj: Any) -> None:
        book, meter = self.probe.book, self.probe.meter
        if book is None or meter is None:
            return
        if event == "tokens":                     # every running request's token of a forward, at once
            if self._driving:
                self.probe.forward_ends(getattr(self.scheduler, "cache", None))
            book.tokens([(req.id, req.output[-1]) for req in obj], book.clock())
            for req in obj:
                if req.finished:
                    book.finish(req.id, req.finish_reason)
                    self._finished_now += 1
        elif event == "submitted":
            book.arrive(obj.id, obj.prompt)
        elif event == "prefill":
            book.start(obj.id)
            self._drive()
            self.probe.forward_begins(PREFILL, 1, len(obj.prompt), obj.id, 0)
            if self._first_forward and self.probe.attention_due():
                self.shown.count(obj.id)
            self._first_forward = False
        elif event == "decode":
            if not obj:
                return
            due = self._first_forward and self.probe.attention_due()
            row = self.shown.pick([r.id for r in obj]) if due else 0   # the row matters only when recorded
            req = obj[row]
            self._drive()
            self.probe.forward_begins(DECODE, len(obj), 1, req.id, len(req.prompt) + len(req.output) - 1, row)
            if due:
                self.shown.count(req.id)
            self._first_forward = False
        elif event == "iteration":
            self._first_forward = True
            finished, self._finished_now = self._finished_now, 0
            self.probe.end_iteration(running=len(obj.running), waiting=len(obj.waiting), finished=finished)


class RowChooser:
    """Which batch row's attention to record: the request shown least so far (the earliest row on
    a tie), so over a run every request's tokens get attention maps, not only batch row 0's."""

    def __init__(self) -> None:
        self.shown: dict[int, int] = {}

    def pick(self, request_ids: Sequence[int], open_rows: Sequence[bool] | None = None) -> int:
        """The row to record among `request_ids` (only rows with `open_rows[i]`, when given)."""
        rows = [i for i in range(len(request_ids)) if open_rows is None or open_rows[i]] or [0]
        return min(rows, key=lambda i: (self.shown.get(request_ids[i], 0), i))

    def count(self, request_id: int) -> None:
        """`request_id`'s attention is recorded at this step."""
        self.shown[request_id] = self.shown.get(request_id, 0) + 1
        if len(self.shown) > 100_000:       # a long-running server: forget the oldest requests
            for key in list(self.shown)[:50_000]:
                del self.shown[key]


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
        self.leads: list[int] = []
        self.shown = RowChooser()
        self._pending: int | None = None
        self._put = probe.guard(self._on_put, "generate streamer put")
        self._flush_guarded = probe.guard(self._flush, "generate streamer iteration end")
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
            if token == self.pad and token not in self.eos:
                # generate() pads a row its stopping criteria ended (a stop string): it stopped at
                # its last real token, and the pads are not its output
                self.open[row] = False
                book.finish(self.rows[row], "stop")
                finished += 1
                continue
            book.token(self.rows[row], token)
            self.lengths[row] += 1
            if token in self.eos:
                self.open[row] = False
                book.finish(self.rows[row], "stop")
                finished += 1
        # the iteration ends when the next forward starts (or at `end()`): only then is it known
        # whether the rows still open stopped at the length limit
        self._pending = finished

    def _flush(self) -> None:
        """End the pending iteration; say which row the next (decode) forward records."""
        if self._pending is None:
            return
        finished, self._pending = self._pending, None
        running = sum(self.open)
        self.probe.end_iteration(running=running, waiting=0, finished=finished)
        meter = self.probe.meter
        if running and meter is not None:
            row = self.shown.pick(self.rows, self.open)
            meter.expect(DECODE, self.rows[row], self.lengths[row] - 1, row)
            if self.probe.attention_due():
                self.shown.count(self.rows[row])

    def _start(self, prompt_BT: torch.Tensor) -> None:
        book, meter = self.probe.book, self.probe.meter
        self._active = True
        self.probe.drivers += 1
        self._pending = None
        self.probe.before_forward = self._flush_guarded
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
        self.leads = leads
        if not self.rows:
            return
        row = self.shown.pick(self.rows)
        # the row's first query is its first pad: negative positions are padding
        meter.expect(PREFILL, self.rows[row], -leads[row], row)
        if self.probe.attention_due():
            self.shown.count(self.rows[row])

    def _on_end(self) -> None:
        book = self.probe.book
        if self._active and book is not None:
            ended = 0
            for i, (rid, still) in enumerate(zip(self.rows, self.open)):
                if still:
                    book.finish(rid, "length")
                    self.open[i] = False
                    ended += 1
            if self._pending is not None:
                self._pending += ended
            self._flush()
            self.probe.drivers -= 1
            if self.probe.before_forward == self._flush_guarded:
                self.probe.before_forward = None
        self._active = False
        self.rows, self.lengths, self.open = [], [], []
