"""Inference mode: what a model does while it generates, per request and per serving iteration.

`inspector.watch(model, run_dir, mode="inference")` returns an `InferenceWatch`
(`inspector.inference.watch`); the `inference` probe (`probe.py`) records `inference_iteration`
and `inference_request` rows from the model's forwards (`iterations.py`, `cache_stats.py`) and
from a driver (`drivers.py`: the engine's scheduler, Hugging Face `generate()`); `requests.py`
keeps the per-request latencies. Importing this package imports torch: the UIs never do.
"""
