"""Percentiles for the benchmark scripts."""

from __future__ import annotations


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile by nearest rank (p99 of 20 samples is the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
