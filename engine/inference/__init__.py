"""Inference: sampling, cached generation, and the dynamic batching scheduler."""

from inspector_engine.inference.generate import generate
from inspector_engine.inference.sampling import SamplingParams, filter_logits, sample
from inspector_engine.inference.scheduler import BatchScheduler, Request

__all__ = ["BatchScheduler", "Request", "SamplingParams", "filter_logits", "generate", "sample"]
