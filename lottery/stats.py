"""Latency figures: one percentile rule for the server and the benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["LatencySample", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by the nearest-rank rule; 0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class LatencySample:
    """Latencies, kept up to a bound (every other one is dropped past it)."""

    def __init__(self, limit: int = 100_000) -> None:
        self.count = 0
        self._limit = limit
        self._stride = 1
        self._values: list[float] = []

    def add(self, seconds: float) -> None:
        self.count += 1
        if self.count % self._stride == 0:
            self._values.append(seconds)
            if len(self._values) >= self._limit:  # keep memory bounded on long runs
                del self._values[::2]
                self._stride *= 2

    def percentile(self, q: float) -> float:
        return percentile(self._values, q)
