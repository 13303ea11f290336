"""Per-iteration numbers of an inference loop, measured at the model's own forward.

A forward pre-hook and a forward hook on the watched model time every forward and sort it into
*prefill* (the cache it was given was empty, or it had no cache and more than one token) or
*decode*, unless a driver (the HF streamer) said beforehand which it is and which batch row
(holding which request) the attention probe is to record. A driver that sees every forward begin
and end (the engine scheduler's listener) calls `begin` and `end` itself and switches the hooks
off (`driven`): a hooked module's every call takes torch's slow path. While the
forward runs, `shared[STAGE_KEY]` holds its stage, so the experts probe splits its counts by stage,
and `shared[BATCH_ROW_KEY]` that row; when it ends, the callables in `shared[FORWARD_END_KEY]` are
called with the stage (the experts probe reads the engine routers' own per-forward load then). The
meter adds up each iteration's forwards until `end_iteration` turns them into one
`inference_iteration` row. Its wall time (`ms`) runs from the previous iteration's end (the serving
loop's own work between forwards, the Inspector's included, is some iteration's time) or, after an
idle spell of more than `IDLE_GAP_S` with no forward (a server between bursts; before the first
iteration), from its first forward.

Forward time: on the host clock on CPU; on CUDA two events per forward, read at the end of the
iteration, by which time the driver has already waited for the sampled tokens.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from inspector.inference.cache_stats import CacheStats, cache_stats, cached_length, find_cache
from inspector.probes.attention.sink import BATCH_ROW_KEY
from inspector.probes.base import Probe
from inspector.probes.experts import DECODE, FORWARD_END_KEY, PREFILL, STAGE_KEY
from inspector.probes.switchable import SwitchableHooks

INPUT_KWARGS = ("input_ids", "tokens", "inputs_embeds")
IDLE_GAP_S = 0.25
"""A gap without forwards longer than this before an iteration is idle time, not the iteration's."""


@dataclass
class _Forward:
    """One forward being timed."""

    stage: str
    tokens: int
    batch: int
    start: Any
    end: Any = None


@dataclass
class IterationTotals:
    """What the forwards of one iteration added up to."""

    started: float | None = None   # the previous iteration's end (None: none yet), or its first forward
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    prefill_requests: int = 0
    batch_size: int = 0
    cache: CacheStats | None = None
    attn_request: int | None = None
    attn_query_start: int | None = None
    attn_query_tokens: int | None = None
    forwards: int = 0


def _input_shape(args: tuple, kwargs: dict[str, Any]) -> tuple[int, int]:
    """(batch, tokens per row) of a forward's token input; (1, 1) when none is found."""
    candidates = [a for a in args[:1] if isinstance(a, torch.Tensor)] + [
        kwargs[k] for k in INPUT_KWARGS if isinstance(kwargs.get(k), torch.Tensor)]
    for t in candidates:
        if t.dim() >= 2:
            return int(t.shape[0]), int(t.shape[1])
        if t.dim() == 1:
            return 1, int(t.shape[0])
    return 1, 1


class IterationMeter:
    """Times and classifies the watched model's forwards; see the module docstring."""

    def __init__(self, model: nn.Module, shared: dict[str, Any],
                 on_forward: Callable[[], Any] | None = None,
                 on_forward_start: Callable[[], Any] | None = None) -> None:
        self.model = model
        self.on_forward = on_forward
        self.on_forward_start = on_forward_start
        self.shared = shared
        self.totals = IterationTotals()
        self._expected: tuple[str, int | None, int | None, int] | None = None
        self._open: _Forward | None = None
        self._done: list[_Forward] = []
        self._depth = 0
        self._hooks: list[SwitchableHooks] = []
        param = next(model.parameters(), None)
        self._cuda = param is not None and param.device.type == "cuda"

    def attach(self, probe: Probe) -> list[SwitchableHooks]:
        """Hook the model's forward (guarded by `probe`); returns the hooks, for `probe.track`."""
        self._hooks = [SwitchableHooks(probe, [(self.model, self._pre)], pre=True, with_kwargs=True),
                       SwitchableHooks(probe, [(self.model, self._post)], with_kwargs=True)]
        self.driven(False)
        return list(self._hooks)

    def driven(self, by_driver: bool) -> None:
        """`by_driver`: a driver calls `begin` / `end` for every forward; the hooks go off."""
        for hooks in self._hooks:
            hooks.switch(not by_driver)

    def detach(self) -> None:
        """Remove the hooks."""
        for hooks in self._hooks:
            hooks.remove()
        self._hooks = []
        self.shared.pop(STAGE_KEY, None)
        self.shared.pop(BATCH_ROW_KEY, None)

    def expect(self, stage: str, request: int | None = None, query_start: int | None = None, row: int = 0) -> None:
        """The next forward is `stage`; the attention it records is batch row `row`'s, which holds
        `request`, whose first query sits at position `query_start` of that request's tokens."""
        self._expected = (stage, request, query_start, row)

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self._depth += 1
        if self._depth > 1:
            return
        if self.on_forward_start is not None:
            self.on_forward_start()      # a driver may end the previous iteration (and say what comes) now
        batch, tokens = _input_shape(args, kwargs)
        expected, self._expected = self._expected, None
        if expected is not None:
            stage, request, query_start, row = expected
        else:
            cache = find_cache(args, kwargs)
            empty = cached_length(cache) == 0 if cache is not None else tokens > 1
            stage, request, query_start, row = (PREFILL if empty else DECODE), None, None, 0
        self.begin(stage, batch, tokens, request, query_start, row)

    def begin(self, stage: str, batch: int, tokens: int, request: int | None = None, query_start: int | None = None,
              row: int = 0) -> None:
        """A forward of `stage` over `batch` rows of `tokens` tokens starts now; the attention probe
        records batch row `row` (request `request`, its first query at `query_start`)."""
        t = self.totals
        start = time.perf_counter()
        if t.forwards == 0:
            t.attn_request, t.attn_query_start, t.attn_query_tokens = request, query_start, tokens
            if t.started is None or start - t.started > IDLE_GAP_S:
                t.started = start     # an idle spell before the first forward is no iteration's time
        t.forwards += 1
        self.shared[STAGE_KEY] = stage
        self.shared[BATCH_ROW_KEY] = row
        if self._cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        self._open = _Forward(stage, batch * tokens, batch, start)

    def _post(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        self._depth = max(self._depth - 1, 0)
        if self._depth > 0 or self._open is None:
            return
        self.end(find_cache(args, kwargs))
        if self.on_forward is not None:
            self.on_forward()

    def end(self, cache: Any = None) -> None:
        """The forward `begin` opened is done; `cache`: the cache it wrote to (its size is recorded)."""
        if self._open is None:
            return
        fwd, self._open = self._open, None
        for listener in self.shared.get(FORWARD_END_KEY, ()):
            listener(fwd.stage)
        self.shared.pop(STAGE_KEY, None)
        self.shared.pop(BATCH_ROW_KEY, None)
        if self._cuda:
            fwd.end = torch.cuda.Event(enable_timing=True)
            fwd.end.record()
        else:
            fwd.end = time.perf_counter()
        self._done.append(fwd)
        t = self.totals
        if fwd.stage == PREFILL:
            t.prompt_tokens += fwd.tokens
            t.prefill_requests += fwd.batch
        else:
            t.generation_tokens += fwd.tokens
            t.batch_size = max(t.batch_size, fwd.batch)
        if cache is not None and (fwd.stage == DECODE or t.cache is None or t.batch_size == 0):
            t.cache = cache_stats(cache)

    def end_iteration(self) -> tuple[IterationTotals, float]:
        """The iteration's totals (forward ms filled in) and its wall ms: from its first forward's
        start to now (0 without a forward)."""
        t, self.totals = self.totals, IterationTotals()
        done, self._done = self._done, []
        for fwd in done:
            if self._cuda:
                fwd.end.synchronize()
                ms = float(fwd.start.elapsed_time(fwd.end))
            else:
                ms = (fwd.end - fwd.start) * 1000.0
            if fwd.stage == PREFILL:
                t.prefill_ms += ms
            else:
                t.decode_ms += ms
        now = time.perf_counter()
        wall_ms = (now - t.started) * 1000.0 if t.started is not None else 0.0
        self.totals.started = now
        return t, wall_ms
