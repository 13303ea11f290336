"""Seeded-fault multi-process jobs (torchrun, gloo, CPU) for the watchdog, hang verdict and straggler tests."""
