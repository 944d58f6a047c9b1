"""Benchmarks: never part of ``make test``; each prints ratios to a baseline measured in the same run."""
