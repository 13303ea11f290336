"""Widgets of the terminal UI: half-block heatmap, rank table, bars, status bar."""
