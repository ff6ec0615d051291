"""The agency's one retry policy: exponential back-off with full jitter, capped.

Every retry loop of the agency (connecting, the batch sender, a single bet,
DONE, the winners query) counts its fruitless tries with a `Retry` and waits
between them with `Retry.wait`, so none can spin without a pause or run past
its attempts. `exponential_backoff` is the schedule, after httpcore's
generator of the same name.

Full jitter (a wait drawn from 0 up to the exponential ceiling) spreads
agencies that lost the server at the same moment, so they do not all knock
again in step.

An agency given several servers tries each in turn (lottery/session.py).
Its `Retry` then counts in rounds of that many tries, a ``cycle``: a
fruitless try moves on to the next server at once, and only a whole round
without a reply counts as one failure and waits. So ``attempts`` means the
same with one server or five: rounds through the list without a reply.
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
        attempts: how many fruitless tries (rounds of ``cycle`` tries) in a
            row the loop may make.
        base_delay: the ceiling of the first wait, doubled after each.
        floor: see `exponential_backoff`.
        cycle: tries in one round, one per server; a try that is not the
            last of its round is not counted and waits for nothing.
    """

    def __init__(
        self, attempts: int, base_delay: float, *, floor: float = 0.0, cycle: int = 1
    ) -> None:
        if cycle < 1:
            raise ValueError("cycle must be at least 1")
        self.attempts = attempts
        self.cycle = cycle
        self.failures = 0
        self.tries = 0  # fruitless tries since the last progress, in all rounds
        self._base = base_delay
        self._floor = floor
        self._delays = exponential_backoff(base_delay, floor=floor)

    def __repr__(self) -> str:
        return f"<Retry {self.failures}/{self.attempts} failed>"

    def failed(self) -> bool:
        """Count one fruitless try; True if the loop may try again.

        Within a round (``cycle`` > 1) a try only moves the loop on; the
        round's last one counts as one failure.
        """
        self.tries += 1
        if not self.round_over:
            return True
        self.failures += 1
        return self.failures < self.attempts

    @property
    def round_over(self) -> bool:
        """Whether the last fruitless try ended a round: wait before the next."""
        return self.tries % self.cycle == 0

    def reset(self) -> None:
        """A try made progress: the count, and the waits, start over."""
        self.failures = self.tries = 0
        self._delays = exponential_backoff(self._base, floor=self._floor)

    def next_delay(self) -> float:
        """The wait before the next try (for a log line before `wait` sleeps it)."""
        return next(self._delays)

    async def wait(self, delay: float | None = None) -> None:
        """Sleep ``delay``, or the next wait of the schedule."""
        await sleep(self.next_delay() if delay is None else delay)
