"""Textual terminal UI: a live monitor of every rank of a run, and its replay.

It reads through the store's reader and `inspector.views` only, and never imports torch, so it
starts fast on a login node. Entry point: `inspector tui RUN_OR_ROOT` (see `app.run_tui`).
"""
