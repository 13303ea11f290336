"""`InferenceWatch`: a `Watch` for a model that generates (`inspector.watch(model, run, mode="inference")`).

One step is one serving iteration. Tell it what drives the model, so requests are recorded:

    watch = inspector.watch(model, "runs/gen", mode="inference", tokenizer=tok)
    watch.observe(scheduler)                   # the engine's BatchScheduler (anything with add_listener)
    scheduler.run()
    # or, for Hugging Face:  model.generate(**inputs, streamer=watch.streamer())
    watch.close()

Without a driver every top-level forward of the model is one iteration (no request rows).
"""
from __future__ import annotations

import dataclasses
import math

from typing import Any, Mapping, Sequence

from torch import nn

from inspector.inference.drivers import GenerateStreamer, SchedulerDriver
from inspector.inference.probe import InferenceProbe
from inspector.probes import Sampling, resolve_probes
from inspector.probes.experts import FORWARD_END_KEY
from inspector.store.recorder import Recorder
from inspector.watch import Watch

DEFAULT_PROBES = ("attention", "experts", "system")
"""The "default" probe set of an inference watch (plus the `inference` probe itself, always on)."""

DEFAULT_PERIODS = {"attention": 16, "experts": 16}
"""Inference sampling defaults, in iterations: expert load recorded every 16th iteration as the sum
of the 16 (no token is dropped: the experts probe carries stage sums to the next record), attention
maps every 16th iteration (each a full row over the whole cache)."""


def inference_probes(probes: str | Sequence[str]) -> list[str]:
    """The probes an inference watch attaches for `probes` ("default": `DEFAULT_PROBES`)."""
    if probes == "default":
        return list(DEFAULT_PROBES)
    return [p for p in resolve_probes(probes) if p != InferenceProbe.name]


def inference_sampling(every: int | Mapping[str, int] | None, **options: Any) -> Sampling:
    """`Sampling` with the inference defaults, changed by `every` as in training."""
    periods: dict[str, int] = dict(DEFAULT_PERIODS)
    if isinstance(every, int):
        sampling = Sampling.build(every, **options)
    else:
        periods.update(every or {})
        sampling = Sampling.build(periods, **options)
    if "offsets" in options:
        return sampling
    return dataclasses.replace(sampling, offsets={"experts": apart(sampling.attention, sampling.experts)})


def apart(attention: int, experts: int) -> int:
    """The expert record's offset that never lands on an attention iteration: half the periods'
    greatest common divisor (16 and 16: 8). The Inspector's sampled work is then spread over two
    iterations, so no one iteration (and no request's inter-token latency) carries both."""
    return math.gcd(max(attention, 0), max(experts, 0)) // 2


class InferenceWatch(Watch):
    """A watch in inference mode; see the module docstring."""

    tracks_backward = False

    def __init__(self, model: nn.Module, recorder: Recorder, *, probes: Sequence[str], sampling: Sampling,
                 tokenizer: Any = None, tokens_every: int = 1, hang_after_s: float | None = 20.0,
                 heartbeat_s: float = 2.0) -> None:
        super().__init__(model, recorder, optimizer=None, probes=probes, sampling=sampling,
                         hang_after_s=hang_after_s, heartbeat_s=heartbeat_s)
        probe = InferenceProbe()
        probe.tokenizer, probe.tokens_every = tokenizer, tokens_every
        self._attach_probe(InferenceProbe.name, probe)
        self.inference = probe
        probe.phases = self.phase_hooks
        probe.end_step = self.step

    def _prepare_shared(self, shared: dict[str, Any]) -> None:
        """Every forward's end will be told to `shared[FORWARD_END_KEY]` (by the inference probe's
        meter): the experts probe reads the engine routers' own load then, with no hook."""
        shared[FORWARD_END_KEY] = []

    def observe(self, scheduler: Any) -> SchedulerDriver:
        """Record the requests and iterations of `scheduler` (one with `add_listener(fn)`, such as the
        engine's `BatchScheduler`); `.remove()` on the result stops it."""
        return SchedulerDriver(self.inference, scheduler)

    def streamer(self, *, eos_token_ids: Sequence[int] | int | None = None,
                 pad_token_id: int | None = None) -> GenerateStreamer:
        """A streamer for one Hugging Face `generate(..., streamer=...)` call; end-of-sequence and pad
        ids default to the model's `generation_config`."""
        config = getattr(self.model, "generation_config", None)
        if eos_token_ids is None:
            eos_token_ids = getattr(config, "eos_token_id", None)
        if pad_token_id is None:
            pad_token_id = getattr(config, "pad_token_id", None)
        return GenerateStreamer(self.inference, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id)
