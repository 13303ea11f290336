"""The `inference` probe: scheduler iterations and requests of a model watched in inference mode.

It owns an `IterationMeter` (forward hooks on the model: prefill/decode tokens and times, the KV
cache's size, the stage the experts probe splits by) and a `RequestBook` (per-request latency).
Drivers tell it what the serving loop did: `inspector.inference.drivers` has one for the engine's
`BatchScheduler` (its listener events) and one for Hugging Face `generate()` (a streamer). Without a
driver every top-level forward is one iteration. Each iteration becomes one `inference_iteration`
row at the watch's current step, and then the watch's step ends (step = iteration), so every other
probe's records line up with the iterations.

All of it is guarded like any probe: an exception switches the probe off with one warning and a
`probe_error` anomaly; generation goes on.
"""
from __future__ import annotations

from typing import Any, Callable

from inspector.inference.iterations import IterationMeter, IterationTotals
from inspector.inference.requests import RequestBook, record_request
from inspector.probes.attention.sink import INFERENCE_MODE_KEY
from inspector.probes.base import Probe, ProbeContext
from inspector.schema import INFERENCE_ITERATION
from inspector.store.row_buffer import RowBuffer

ITERATION_COLUMNS = (
    "ms", "batch_size", "prompt_tokens", "generation_tokens", "prefill_ms", "decode_ms", "prefill_requests",
    "num_requests_running", "num_requests_waiting", "finished_requests",
    "kv_cache_tokens", "kv_cache_bytes", "kv_cache_allocated_bytes", "kv_cache_decompressed_bytes",
    "kv_cache_usage_perc", "attn_request", "attn_query_start", "attn_query_tokens",
)
"""The columns of an `inference_iteration` row, in `InferenceProbe._row`'s order."""


class InferenceProbe(Probe):
    """Iteration and request records; see the module docstring. Attached by the inference watch
    only (never part of a probe set: in a training loop it would end a step at every forward)."""

    name = "inference"
    kinds = ("inference_iteration", "inference_request")

    def __init__(self) -> None:
        super().__init__()
        self.meter: IterationMeter | None = None
        self.book: RequestBook | None = None
        self.end_step: Callable[[], Any] | None = None
        """Set by the inference watch: ends the watch's step after each iteration's row."""
        self.drivers = 0
        self.event_drivers = 0
        """Drivers that time the forwards from their own events (the meter's hooks are off meanwhile)."""
        self.phases: Any = None
        """Set by the inference watch: its watchdog's `PhaseHooks`, driven alongside the meter."""
        self.before_forward: Callable[[], Any] | None = None
        """Set by a driver that ends an iteration only when the next forward starts (the HF streamer)."""
        self.token_budget: int | None = None
        """Tokens the serving loop may hold (the scheduler's `max_batch_tokens`): the usage denominator."""
        self.tokenizer: Any = None
        self.tokens_every = 1
        self.rows: RowBuffer | None = None
        """The iteration rows not handed to the Recorder yet (one per iteration: a `submit` each would
        cost a decode iteration ~1 %)."""

    def attach(self, ctx: ProbeContext) -> str | None:
        """Hook the model's forward; start the request book."""
        super().attach(ctx)
        ctx.shared[INFERENCE_MODE_KEY] = True
        self.meter = IterationMeter(ctx.model, ctx.shared, on_forward=self._forward_done,
                                    on_forward_start=self._forward_starts)
        for hooks in self.meter.attach(self):
            self.track(hooks)
        self.rows = RowBuffer(ctx.recorder, INFERENCE_ITERATION, ITERATION_COLUMNS)
        self.book = RequestBook(record_request(ctx.recorder, lambda: ctx.step),
                                tokenizer=self.tokenizer, tokens_every=self.tokens_every)
        return None

    def drive(self, on: bool) -> None:
        """`on`: a driver reports every forward's start and end from now on, so the meter's and the
        watchdog's forward hooks go off; off: they are back."""
        if self.meter is not None:
            self.meter.driven(on)
        if self.phases is not None:
            self.phases.driven(on)

    def forward_begins(self, stage: str, batch: int, tokens: int, request: int | None = None,
                       query_start: int | None = None, row: int = 0) -> None:
        """A driven forward starts (`IterationMeter.begin`'s arguments)."""
        if self.meter is not None:
            self.meter.begin(stage, batch, tokens, request, query_start, row)
        if self.phases is not None:
            self.phases.forward_begins()

    def forward_ends(self, cache: Any = None) -> None:
        """The driven forward is done; `cache`: the cache it wrote to."""
        if self.meter is not None:
            self.meter.end(cache)
        if self.phases is not None:
            self.phases.forward_ends()

    def attention_due(self) -> bool:
        """True when the attention probe records at the current step."""
        ctx = self.ctx
        return ctx is not None and ctx.sampling.due("attention", ctx.step)

    def _forward_starts(self) -> None:
        if self.before_forward is not None:
            self.before_forward()

    def _forward_done(self) -> None:
        """Without a driver, one top-level forward is one iteration."""
        if self.drivers == 0:
            self.end_iteration()

    def end_iteration(self, *, running: int | None = None, waiting: int | None = None, finished: int = 0) -> None:
        """Record the iteration just done and end the watch's step."""
        if self.meter is None or self.ctx is None or self.switched_off is not None:
            return
        totals, wall_ms = self.meter.end_iteration()
        if totals.forwards and self.rows is not None:
            self.rows.add(self.ctx.step, self._row(totals, wall_ms, running, waiting, finished))
        if self.end_step is not None:
            self.end_step()

    def _row(self, t: IterationTotals, wall_ms: float, running: int | None, waiting: int | None,
             finished: int) -> tuple[Any, ...]:
        """One `inference_iteration` row, in `ITERATION_COLUMNS` order."""
        cache = t.cache
        if cache is None:
            sizes: tuple[Any, ...] = (None, None, None, None, None)
        else:
            usage = cache.tokens / self.token_budget if self.token_budget else None
            sizes = (cache.tokens, cache.bytes, cache.allocated_bytes, cache.decompressed_bytes, usage)
        return (wall_ms, t.batch_size, t.prompt_tokens, t.generation_tokens, t.prefill_ms, t.decode_ms,
                t.prefill_requests, t.batch_size if running is None else running, waiting, finished,
                *sizes, t.attn_request, t.attn_query_start, t.attn_query_tokens)

    def detach(self) -> None:
        """Requests still open are recorded as aborted; the hooks go."""
        if self.book is not None and self.switched_off is None:
            try:
                self.book.close()
            except Exception as exc:  # noqa: BLE001 - closing must not raise
                self.switch_off(exc, "closing the request book")
        if self.meter is not None:
            self.end_step = None
            if self.meter.totals.forwards and self.switched_off is None:
                try:
                    self.end_iteration()
                except Exception as exc:  # noqa: BLE001
                    self.switch_off(exc, "recording the last iteration")
            self.meter.detach()
        if self.rows is not None:
            try:
                self.rows.close()
            except Exception as exc:  # noqa: BLE001
                self.switch_off(exc, "recording the last iterations")
        super().detach()
