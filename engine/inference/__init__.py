"""Inference: sampling, cached generation, and the dynamic batching scheduler."""

from engine.inference.generate import generate
from engine.inference.sampling import SamplingParams, filter_logits, sample
from engine.inference.scheduler import BatchScheduler, Request

__all__ = ["BatchScheduler", "Request", "SamplingParams", "filter_logits", "generate", "sample"]
