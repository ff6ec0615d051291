"""Group commit: many agencies' batches, one durable transaction.

`Committer` does group commits and nothing else. Connection handlers call
`submit` (through the `Round`) with a batch and await the returned future; a
background task takes *every* batch pending at that moment and commits them in
one transaction (`AsyncStore.commit`). Batches that arrive while that commit runs wait for the next
one. With many agencies sending at once, one fsync then covers many batches,
and no batch is acknowledged before the transaction holding it is on disk.

A group is capped at `max_group_bets` bets (4096 by default) so that, with
hundreds of agencies, one huge transaction cannot hold every acknowledgement
back for long. The pending list is bounded too: once a group's worth of bets
waits for a commit, handlers await `wait_for_room` before reading more, and the
backpressure reaches the agencies through TCP. They wait in line, and room wakes
them one at a time (each woken handler submits, which wakes the next while room
is left): with 10,000 connections waiting, a commit must not wake them all to
let forty through. A batch then waits for at most
the running commit and its own, however many agencies send at once (measured
with 1,000 agencies: p99 from reading a batch to its ack about 32 ms; bigger
groups raise it, see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable

from .errors import StoreError
from .store import AsyncStore, Outcome, PendingBatch

__all__ = ["CommitResult", "Committer"]

#: What a submitted batch's future resolves to: the store's verdict, or the
#: error that made its whole group fail (nothing of that group was stored).
CommitResult = Outcome | StoreError


class Committer:
    """Commits submitted batches to ``store`` in groups, one group at a time.

    Args:
        store: an open store; the committer never opens nor closes it.
        max_group_bets: the most bets one transaction takes.
        max_pending_bets: bets that may wait for a commit before `wait_for_room`
            makes submitters wait (default: one group, ``max_group_bets``).
    """

    def __init__(
        self,
        store: AsyncStore,
        *,
        max_group_bets: int = 4096,
        max_pending_bets: int | None = None,
    ) -> None:
        self._store = store
        self._max_group_bets = max_group_bets
        self._max_pending_bets = max_pending_bets or max_group_bets
        self._pending_bets = 0
        self._in_flight: list[tuple[PendingBatch, asyncio.Future[CommitResult]]] = []
        self._group_done = asyncio.Event()  # set after every group, for settle()
        #: Handlers waiting for room, in arrival order (see `wait_for_room`).
        self._room_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._pending: list[tuple[PendingBatch, asyncio.Future[CommitResult]]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.batches_committed = 0
        #: Called after each successful commit with its seconds and batch count
        #: (the metrics module observes commit latency through it).
        self.on_commit: Callable[[float, int], None] | None = None

    def start(self) -> None:
        """Start the commit task (in the running loop)."""
        self._task = asyncio.create_task(self._commit_loop(), name="lottery-committer")

    async def wait_for_room(self) -> None:
        """Wait until the pending bets are under the bound (backpressure), in line.

        The caller must `submit` as soon as this returns: that is what wakes
        the next one in line while there is room.
        """
        if self._pending_bets < self._max_pending_bets and not self._room_waiters:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._wake_next()  # it was woken, but will not submit: pass it on
            else:  # still in line, unless `_wake_next` dropped it already
                with contextlib.suppress(ValueError):
                    self._room_waiters.remove(waiter)
            raise

    def _wake_next(self) -> None:
        """Wake the first handler in line if there is room for its batch."""
        waiters = self._room_waiters
        while waiters and self._pending_bets < self._max_pending_bets:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def settle(self, agency: int) -> None:
        """Wait until no batch of ``agency`` is waiting for, or inside, a commit.

        A reconnecting agency's new handshake must report what is stored
        *after* every batch its old connection already handed over.
        """
        while any(b.agency == agency for b, _ in (*self._pending, *self._in_flight)):
            self._group_done.clear()
            await self._group_done.wait()

    def submit(self, batch: PendingBatch) -> asyncio.Future[CommitResult]:
        """Queue ``batch`` for the next commit; the future resolves after it."""
        future: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        if self._closing:
            future.set_result(StoreError("the server is shutting down"))
            return future
        self._pending.append((batch, future))
        self._pending_bets += len(batch.records)
        self._wakeup.set()
        if self._room_waiters:
            self._wake_next()
        return future

    def _take_group(self) -> list[tuple[PendingBatch, asyncio.Future[CommitResult]]]:
        size = taken = 0
        for batch, _ in self._pending:
            # Stop before the batch that would pass the cap; a group always
            # takes at least one batch, even one larger than the cap.
            if taken and size + len(batch.records) > self._max_group_bets:
                break
            size += len(batch.records)
            taken += 1
        group, self._pending = self._pending[:taken], self._pending[taken:]
        self._pending_bets -= size
        self._wake_next()
        return group

    async def _commit_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                group = self._take_group()
                self._in_flight = group
                # One group at a time, so one commit's outcomes are known
                # before the next group is decided (the store's per-agency
                # dedup needs that order).
                results, seconds = await self._commit_group(group)
                for (_, future), result in zip(group, results, strict=True):
                    if not future.done():  # its connection may have been cancelled
                        future.set_result(result)
                self._in_flight = []
                self._group_done.set()
                # After the futures: a failing observer must not turn a commit
                # that happened into refused batches.
                if seconds >= 0 and self.on_commit is not None:
                    with contextlib.suppress(Exception):
                        self.on_commit(seconds, len(group))
            if self._closing:
                return

    async def _commit_group(
        self, group: list[tuple[PendingBatch, asyncio.Future[CommitResult]]]
    ) -> tuple[list[CommitResult], float]:
        """Commit one group; its results, and the seconds it took (-1 if it failed)."""
        try:
            batches = [batch for batch, _ in group]
            started = time.perf_counter()
            results: list[CommitResult] = list(await self._store.commit(batches))
            seconds = time.perf_counter() - started
            if len(results) != len(group):
                raise RuntimeError(f"{len(results)} outcomes for {len(group)} batches")
        except StoreError as exc:
            return [exc] * len(group), -1.0
        except Exception as exc:  # a bug, not a disk fault: refuse, stay up
            return [StoreError(f"commit failed unexpectedly: {exc!r}")] * len(group), -1.0
        self.commits += 1
        self.batches_committed += len(group)
        return results, seconds

    async def close(self) -> None:
        """Commit what is pending, then stop; later submits get a `StoreError`.

        Safe to call twice. The store stays open: its owner closes it.
        """
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
