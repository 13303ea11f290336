"""Python stages of the GPU readiness kit driven by `benchmarks/gpu_check.sh` (issue 14, item 8).

Each stage is a module run as `python -m benchmarks.gpu_check.<stage> OUT` from the repo root; it
writes `OUT/results/<stage>.json` (status, figures, budget, verdict) and its log goes to
`OUT/logs/<stage>.log`. `summary` turns the results (and the driver's exit codes) into the table.

Stages, in order: env, cuda_tests, overhead, nvml, fsdp_compile, sample_run, determinism. Environment:
- `GPU_CHECK_DRY_RUN=1`: run every stage on CPU, GPU parts swapped for CPU ones or "skipped: no CUDA".
- `GPU_CHECK_QUICK=1`: smallest sizes (the test of the script uses it).
- `GPU_CHECK_FAIL=stage[,stage]`: make those stages raise at their start (to test the plumbing).
- `GPU_CHECK_HANG=stage[,stage]`: make those stages sleep until their timeout (likewise).
"""
