"""The draw barrier: a counter plus an `asyncio.Event`.

Theory of operation
-------------------
The threaded design this replaces used ``threading.Barrier(N)``: each agency's
thread called ``wait()`` after its last bet and blocked until all N had. That
ties the barrier to threads (and to connections): a thread that dies, or an
agency that reconnects on a new connection, breaks it.

Here the barrier is two pieces of plain state and one event:

- ``done``: the *set* of agency ids that said they are done. A set, keyed by
  agency id rather than by connection, so a repeated "done" counts once and an
  agency that reconnects is still the same agency. Its size is the counter.
- ``opened``: becomes True exactly once, when the set reaches N. `arrive`
  returns True to that one caller only, and that caller runs the draw.
- ``_wake``: an `asyncio.Event` that winners queries wait on (`wait`). Its
  owner, the `Round`, sets it with `release` once the draw is made; `shutdown`
  sets it too, so no waiter can sleep through either. Opening and releasing
  are two steps because the draw sits between them: the barrier opens the
  moment the last agency is done, and its waiters may go only once the
  winners are known.

Nothing here needs a lock: `arrive` changes the set and the flag without an
await in between, and in one event loop no other coroutine can run in the
middle of synchronous code. (The draw itself does await the store; the
round's draw lock covers that.)

A connection closing changes nothing here: it was never counted, only its
agency id was. A restarted server rebuilds the barrier from the store's record
of done agencies (`DrawBarrier(n, done=...)`), and releases it at once if the
draw was already made.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable

__all__ = ["DrawBarrier"]


class DrawBarrier:
    """Opens when all ``agencies`` distinct agencies are done.

    Args:
        agencies: N, the number of agencies in the round (ids 1..N).
        done: agencies already done (from the store, after a restart).
    """

    def __init__(self, agencies: int, done: Iterable[int] = ()) -> None:
        if agencies < 1:
            raise ValueError("a round needs at least one agency")
        self.agencies = agencies
        self._done: set[int] = {a for a in done if 1 <= a <= agencies}
        self.opened = len(self._done) >= agencies
        self.closed = False
        self._released = False
        self._wake = asyncio.Event()

    def arrive(self, agency: int) -> bool:
        """Count ``agency`` as done.

        Returns:
            True for exactly one call: the one whose agency completes the set.
            That caller must run the draw and then call `release`.

        Raises:
            ValueError: ``agency`` is not one of 1..N (the server checks ids in
                the handshake, so this would be a bug).
        """
        if not 1 <= agency <= self.agencies:
            raise ValueError(f"agency {agency} is not in 1..{self.agencies}")
        if agency in self._done or self.opened:
            return False
        self._done.add(agency)
        if len(self._done) == self.agencies:
            self.opened = True
            return True
        return False

    def close_early(self) -> list[int] | None:
        """Open the barrier without the agencies still missing (a draw deadline).

        Returns:
            The agencies left out, or None if the barrier was already open.
        """
        if self.opened:
            return None
        self.opened = True
        return self.missing

    @property
    def done(self) -> frozenset[int]:
        return frozenset(self._done)

    def is_done(self, agency: int) -> bool:
        """Whether ``agency`` said it is done (`done` copies the set: O(agencies))."""
        return agency in self._done

    @property
    def missing(self) -> list[int]:
        """Agency ids (1..N) that have not said they are done."""
        return [a for a in range(1, self.agencies + 1) if a not in self._done]

    def first_missing(self, most: int) -> list[int]:
        """The first ``most`` of `missing`, without walking all N agencies past them."""
        return list(itertools.islice(
            (a for a in range(1, self.agencies + 1) if a not in self._done), most
        ))  # fmt: skip

    @property
    def missing_count(self) -> int:
        """``len(missing)``, in O(1): a NOT_READY answer with 10,000 agencies says it."""
        return self.agencies - len(self._done)

    @property
    def released(self) -> bool:
        """Whether `release` was called: the waiters have been let go."""
        return self._released

    def release(self) -> None:
        """The draw is made: let every waiter go (and every later one at once)."""
        self.opened = True
        self._released = True
        self._wake.set()

    def shutdown(self) -> None:
        """The server is stopping: wake every waiter; `wait` returns False."""
        self.closed = True
        self._wake.set()

    async def wait(self) -> bool:
        """Wait until the barrier is released or the server shuts down.

        Returns:
            True if released (the draw is made), False if woken by shutdown
            before that.
            Callers bound the wait with `asyncio.timeout`.
        """
        await self._wake.wait()
        return self._released
