"""Benchmarks: each prints a table; run from the repository root as `python -m scripts.bench.<name>`."""
