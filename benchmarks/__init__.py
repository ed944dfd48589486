"""Benchmarks for lightning_influence (opt-in; never part of the timed test suite)."""
