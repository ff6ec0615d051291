"""The batch sender's in-flight window: batches on the wire, awaiting their acks.

`BatchSender` (lottery/sender.py) puts each numbered batch in the window
before sending it and takes it out when an ack covers its ``seq``. What is
still in the window when the line is lost is sent again after reconnecting.
The writer waits for room, the ack reader for something to wait on; one
`asyncio.Condition` wakes both.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Outgoing", "Window"]


@dataclass(slots=True)
class Outgoing:
    """One batch of encoded records; numbered (``seq``) when it first goes out."""

    seq: int
    records: bytes
    count: int
    sent: float = 0.0  # loop time of the last send, for the ack latency
    #: Each record's input position, in order; the last one is the batch's ``input_rows``.
    lines: Sequence[int] = ()

    @property
    def input_rows(self) -> int:
        return self.lines[-1] if self.lines else 0


class Window:
    """The batches on the wire and not yet acknowledged, in send order.

    Changing it is synchronous (no await between reading and writing it);
    each change wakes whoever waits on it. The waits return at once when
    their condition already holds, the common case, without touching the
    event: a 200,000-bet file goes through about a thousand batches, and each
    round trip through the loop costs CPU the agency does not need to spend.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.unacked: dict[int, Outgoing] = {}
        #: Batches cut and waiting for room, in order; numbered as they go out.
        self.pending: collections.deque[Outgoing] = collections.deque()
        self.input_done = False
        # Set on every change; a waiter clears it, then waits for the next one.
        # Clearing never loses a wake-up: set() has already resolved the other
        # waiter's future, and each waiter checks its condition before waiting.
        self._changed = asyncio.Event()

    async def wait_for_room(self) -> None:
        while len(self.unacked) >= self.size:
            self._changed.clear()
            await self._changed.wait()

    async def wait_for_unacked(self) -> None:
        while not (self.unacked or self.input_done):
            self._changed.clear()
            await self._changed.wait()

    def add(self, item: Outgoing) -> None:
        """Put a numbered batch in the window (before sending it: a lost line resends it)."""
        self.unacked[item.seq] = item
        self._changed.set()

    def finish_input(self) -> None:
        """No batch will be added any more."""
        self.input_done = True
        self._changed.set()

    def acknowledge_through(self, seq: int) -> list[Outgoing]:
        """Drop every batch up to ``seq`` and return them, in sequence order."""
        done = [self.unacked.pop(s) for s in [s for s in self.unacked if s <= seq]]
        if done:
            self._changed.set()
        return done
