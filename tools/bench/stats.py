"""Percentiles and medians of the measurements, and their rounding for results.json."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100), interpolated between the closest ranks."""
    data = sorted(values)
    if not data:
        return None
    rank = (len(data) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def median(values: Iterable[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def medians(runs: list[dict]) -> dict:
    """The median of every numeric figure over several runs of a scenario."""
    keys = [key for key in runs[0] if isinstance(runs[0][key], int | float | type(None))]
    return {key: median(run.get(key) for run in runs) for key in keys}


def rounded(data):
    """Floats to microseconds (or 6 digits): enough, and a readable diff."""
    if isinstance(data, float):
        return round(data, 6)
    if isinstance(data, dict):
        return {key: rounded(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [rounded(value) for value in data]
    return data
