"""The batch sender's in-flight window: batches on the wire, awaiting their acks.

`BatchSender` (lottery/sender.py) puts each numbered batch in the window
before sending it and takes it out when an ack covers its ``seq``. What is
still in the window when the line is lost is sent again after reconnecting.
The writer waits for room, the ack reader for something to wait on; one
`asyncio.Condition` wakes both.
"""

from __future__ import annotations

import asyncio
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
    """The batches on the wire and not yet acknowledged, in send order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.unacked: dict[int, Outgoing] = {}
        self.input_done = False
        self._changed = asyncio.Condition()

    async def wait_for_room(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.unacked) < self.size)

    async def wait_for_unacked(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self.unacked) or self.input_done)

    async def update(self, add: Outgoing | None = None, *, input_done: bool = False) -> None:
        async with self._changed:
            if add is not None:
                self.unacked[add.seq] = add
            self.input_done |= input_done
            self._changed.notify_all()

    async def acknowledge_through(self, seq: int) -> list[Outgoing]:
        """Drop every batch up to ``seq`` and return them."""
        async with self._changed:
            done = [self.unacked.pop(s) for s in [s for s in self.unacked if s <= seq]]
            self._changed.notify_all()
            return done
