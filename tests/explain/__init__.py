"""Seeded loss spikes with a planted layer, and `inspector explain` ranking it first."""
