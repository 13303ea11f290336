"""Dynamic (continuous) batching over one shared, right-aligned MLA latent cache.

Each `BatchScheduler.step`:

1. admits waiting requests in FIFO order while the batch has fewer than ``max_batch_size`` rows
   and the tokens reserved by running requests (``len(prompt) + max_new_tokens`` each) stay within
   ``max_batch_tokens``; each admitted prompt is prefilled alone, its first token sampled, and its
   cache rows merged into the batch cache (right-aligned; shorter rows are left-padded and masked);
2. decodes one token for every running request with a single batched forward;
3. retires requests that hit ``max_new_tokens`` or a stop token, dropping their cache rows.

Listeners (`add_listener`) are plain callables ``fn(event, obj)`` told what the scheduler does, so
tools can observe it without the engine knowing them: ``"submitted"`` (a `Request`, at `submit`),
``"prefill"`` (the `Request` about to be prefilled), ``"decode"`` (the list of running requests, in
batch-row order, before the batched decode forward), ``"tokens"`` (the list of `Request`s that just
accepted a token, at once: every running request after a decode, one request after its prefill;
``finished`` is set on a request whose last token it was), ``"iteration"`` (the scheduler, at the
end of each `step`). A listener that raises propagates: it is the listener's job to guard itself.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from inspector_engine.inference.generate import make_generator
from inspector_engine.inference.sampling import SamplingParams, sample
from inspector_engine.model.cache import KVCache


@dataclass
class Request:
    """One generation request and its result (``output`` excludes the prompt)."""

    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams = field(default_factory=SamplingParams)
    stop_tokens: tuple[int, ...] = ()
    id: int = -1
    output: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None
    generator: torch.Generator | None = field(default=None, repr=False)

    @property
    def reserved_tokens(self) -> int:
        """Cache tokens this request may occupy: prompt plus every token it may generate."""
        return len(self.prompt) + self.max_new_tokens

    def _accept(self, token: int) -> None:
        self.output.append(token)
        if token in self.stop_tokens:
            self.finished, self.finish_reason = True, "stop"
        elif len(self.output) >= self.max_new_tokens:
            self.finished, self.finish_reason = True, "length"


class BatchScheduler:
    """Admits, batches and retires generation requests for one model."""

    def __init__(
        self,
        model: torch.nn.Module,
        max_batch_size: int = 8,
        max_batch_tokens: int = 8192,
        cache_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model.eval()
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.device = next(model.parameters()).device
        self.cache_dtype = cache_dtype
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.cache = KVCache.for_model(model, 0, capacity=1, dtype=cache_dtype)
        self.steps = 0
        self.peak_batch_size = 0
        self._ids = itertools.count()
        self.listeners: list[Callable[[str, Any], None]] = []

    def add_listener(self, fn: Callable[[str, Any], None]) -> Callable[[], None]:
        """Call ``fn(event, obj)`` on every scheduler event (see the module docstring); returns a
        function that removes it."""
        self.listeners.append(fn)
        return lambda: self.listeners.remove(fn) if fn in self.listeners else None

    def _emit(self, event: str, obj: Any) -> None:
        for fn in list(self.listeners):
            fn(event, obj)

    def submit(
        self,
        prompt: list[int],
        max_new_tokens: int,
        params: SamplingParams | None = None,
        stop_tokens: tuple[int, ...] = (),
    ) -> Request:
        """Queue a request; raises if it could never fit the token budget or the model."""
        if not prompt or max_new_tokens < 1:
            raise ValueError("need a non-empty prompt and max_new_tokens >= 1")
        req = Request(list(prompt), max_new_tokens, params or SamplingParams(), tuple(stop_tokens), next(self._ids))
        if req.reserved_tokens > self.max_batch_tokens:
            raise ValueError(f"request needs {req.reserved_tokens} tokens > max_batch_tokens={self.max_batch_tokens}")
        if req.reserved_tokens > self.model.cfg.max_seq_len:
            raise ValueError(f"request needs {req.reserved_tokens} positions > max_seq_len={self.model.cfg.max_seq_len}")
        self.waiting.append(req)
        self._emit("submitted", req)
        return req

    @property
    def has_work(self) -> bool:
        """True while any request is waiting or running."""
        return bool(self.waiting or self.running)

    @torch.no_grad()
    def step(self) -> list[Request]:
        """Admit, decode one token for every running request, retire; returns requests finished now."""
        finished = self._admit()
        if self.running:
            tokens_B1 = torch.tensor([[r.output[-1]] for r in self.running], device=self.device)
            self._emit("decode", list(self.running))
            logits_BV = self.model(tokens_B1, self.cache)[:, -1]
            for i, req in enumerate(self.running):
                req._accept(int(sample(logits_BV[i:i + 1], req.params, req.generator)))
            self._emit("tokens", self.running)
            done = [r for r in self.running if r.finished]
            if done:
                keep = [i for i, r in enumerate(self.running) if not r.finished]
                self.running = [self.running[i] for i in keep]
                self.cache.select(keep)
                finished += done
        self.steps += 1
        self._emit("iteration", self)
        return finished

    def run(self) -> list[Request]:
        """Step until every submitted request is finished; returns them in submission order."""
        done: list[Request] = []
        while self.has_work:
            done += self.step()
        return sorted(done, key=lambda r: r.id)

    def _admit(self) -> list[Request]:
        finished: list[Request] = []
        reserved = sum(r.reserved_tokens for r in self.running)
        while (self.waiting and len(self.running) < self.max_batch_size
               and reserved + self.waiting[0].reserved_tokens <= self.max_batch_tokens):
            req = self.waiting.popleft()
            req.generator = make_generator(req.params, self.device)
            single = KVCache.for_model(self.model, 1, capacity=req.reserved_tokens, dtype=self.cache_dtype)
            prompt_1T = torch.tensor([req.prompt], device=self.device)
            self._emit("prefill", req)
            logits_1V = self.model(prompt_1T, single)[:, -1]
            req._accept(int(sample(logits_1V, req.params, req.generator)))
            self._emit("tokens", [req])
            if req.finished:
                finished.append(req)
                continue
            self.cache.extend(single)
            self.running.append(req)
            reserved += req.reserved_tokens
            self.peak_batch_size = max(self.peak_batch_size, len(self.running))
        return finished
