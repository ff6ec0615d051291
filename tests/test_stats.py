"""stats: the one percentile rule, and a latency sample that stays bounded."""

from __future__ import annotations

import pytest

from lottery.stats import LatencySample, percentile

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, 0.0), ([3.0], 99, 3.0), ([1, 2, 3, 4], 50, 2), ([1, 2, 3, 4], 99, 4), ([5, 1], 0, 1)],
)
def test_percentile_is_the_nearest_rank(values: list[float], q: float, expected: float) -> None:
    """percentile() gives the smallest value with at least q % of the values at or below it."""
    assert percentile(values, q) == expected


def test_a_latency_sample_stays_bounded_and_keeps_counting() -> None:
    """Past its limit a sample drops every other value but still counts every one added."""
    sample = LatencySample(limit=100)
    for i in range(10_000):
        sample.add(i / 10_000)
    assert sample.count == 10_000
    assert 0.45 <= sample.percentile(50) <= 0.55
