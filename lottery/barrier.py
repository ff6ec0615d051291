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
- ``_wake``: an `asyncio.Event` that winners queries wait on. It is set when
  the draw has been made (`set_drawn`) or when the server shuts down
  (`shutdown`), so no waiter can sleep through either.

Nothing here needs a lock: `arrive` changes the set and the flag without an
await in between, and in one event loop no other coroutine can run in the
middle of synchronous code. (The draw itself does await the store; the
committer's lock covers that.)

A connection closing changes nothing here: it was never counted, only its
agency id was. A restarted server rebuilds the barrier from the store's record
of done agencies and of the draw (`DrawBarrier(n, done=..., drawn=...)`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

__all__ = ["DrawBarrier"]


class DrawBarrier:
    """Opens when all ``agencies`` distinct agencies are done.

    Args:
        agencies: N, the number of agencies in the round (ids 1..N).
        done: agencies already done (from the store, after a restart).
        drawn: whether the draw was already made (from the store).
    """

    def __init__(self, agencies: int, done: Iterable[int] = (), drawn: bool = False) -> None:
        if agencies < 1:
            raise ValueError("a round needs at least one agency")
        self.agencies = agencies
        self._done: set[int] = {a for a in done if 1 <= a <= agencies}
        self.opened = len(self._done) >= agencies
        self.drawn = drawn
        self.closed = False
        self._wake = asyncio.Event()
        if drawn:
            self._wake.set()

    def arrive(self, agency: int) -> bool:
        """Count ``agency`` as done.

        Returns:
            True for exactly one call: the one whose agency completes the set.
            That caller must run the draw and then call `set_drawn`.

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

    @property
    def missing(self) -> list[int]:
        """Agency ids (1..N) that have not said they are done."""
        return [a for a in range(1, self.agencies + 1) if a not in self._done]

    def set_drawn(self) -> None:
        """The draw is made: wake every winners query."""
        self.drawn = True
        self._wake.set()

    def shutdown(self) -> None:
        """The server is stopping: wake every waiter (they see `drawn` False)."""
        self.closed = True
        self._wake.set()

    async def wait_drawn(self) -> bool:
        """Wait until the draw is made or the server shuts down.

        Returns:
            True if the draw was made, False if woken by shutdown. Callers
            bound the wait with `asyncio.timeout`.
        """
        await self._wake.wait()
        return self.drawn
