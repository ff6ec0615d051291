"""The agency's one retry policy: exponential back-off with full jitter, capped.

Every retry loop of the agency (connecting, the batch sender, a single bet,
DONE, the winners query) counts its fruitless tries with a `Retry` and waits
between them with `Retry.wait`, so none can spin without a pause or run past
its attempts. `exponential_backoff` is the schedule, after httpcore's
generator of the same name.

Full jitter (a wait drawn from 0 up to the exponential ceiling) spreads
agencies that lost the server at the same moment, so they do not all knock
again in step.
"""

from __future__ import annotations

import itertools
import random
from asyncio import sleep  # a module global so that tests can record the waits
from collections.abc import Iterator

__all__ = ["MAX_BACKOFF", "Retry", "exponential_backoff"]

#: The longest wait between two tries, in seconds.
MAX_BACKOFF = 5.0


def exponential_backoff(
    base: float, cap: float = MAX_BACKOFF, *, floor: float = 0.0
) -> Iterator[float]:
    """Endless waits: the n-th drawn uniformly from ``floor``·c to c, c = min(cap, base·2ⁿ).

    ``floor`` 0 is full jitter; 0.5 keeps every wait at least half its ceiling.
    """
    for n in itertools.count():
        ceiling = min(cap, base * 2**n)
        yield random.uniform(floor * ceiling, ceiling)


class Retry:
    """Counts the fruitless tries in a row of one loop, and waits between them.

    Args:
        attempts: how many fruitless tries in a row the loop may make.
        base_delay: the ceiling of the first wait, doubled after each.
        floor: see `exponential_backoff`.
    """

    def __init__(self, attempts: int, base_delay: float, *, floor: float = 0.0) -> None:
        self.attempts = attempts
        self.failures = 0
        self._base = base_delay
        self._floor = floor
        self._delays = exponential_backoff(base_delay, floor=floor)

    def __repr__(self) -> str:
        return f"<Retry {self.failures}/{self.attempts} failed>"

    def failed(self) -> bool:
        """Count one fruitless try; True if the loop may try again."""
        self.failures += 1
        return self.failures < self.attempts

    def reset(self) -> None:
        """A try made progress: the count, and the waits, start over."""
        self.failures = 0
        self._delays = exponential_backoff(self._base, floor=self._floor)

    def next_delay(self) -> float:
        """The wait before the next try (for a log line before `wait` sleeps it)."""
        return next(self._delays)

    async def wait(self, delay: float | None = None) -> None:
        """Sleep ``delay``, or the next wait of the schedule."""
        await sleep(self.next_delay() if delay is None else delay)
