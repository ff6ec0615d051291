"""Group commit: the bridge between the event loop and the blocking store.

`Committer` owns the store's single worker thread. Connection handlers call
`submit` with a batch and await the returned future; a background task takes
*every* batch pending at that moment and commits them in one transaction, in
the store thread. Batches that arrive while that commit runs wait for the next
one. With many agencies sending at once, one fsync then covers many batches,
and no batch is acknowledged before the transaction holding it is on disk.

A group is capped at `max_group_bets` bets (4096 by default) so that, with
hundreds of agencies, one huge transaction cannot hold every acknowledgement
back for long. The pending list is bounded too: once a group's worth of bets
waits for a commit, handlers await `wait_for_room` before reading more, and the
backpressure reaches the agencies through TCP. A batch then waits for at most
the running commit and its own, however many agencies send at once (measured
with 1,000 agencies: p99 from reading a batch to its ack about 32 ms; bigger
groups raise it, see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
from collections.abc import Callable
from operator import methodcaller
from typing import TypeVar

from .errors import StoreError
from .store import Outcome, PendingBatch, Store

__all__ = ["CommitResult", "Committer"]

T = TypeVar("T")

#: What a submitted batch's future resolves to: the store's verdict, or the
#: error that made its whole group fail (nothing of that group was stored).
CommitResult = Outcome | StoreError


class Committer:
    """Runs a `Store` on its own thread and commits batches in groups.

    Args:
        open_store: builds the store; called on the store thread, since SQLite
            connections belong to the thread that opened them.
        max_group_bets: the most bets one transaction takes.
        max_pending_bets: bets that may wait for a commit before `wait_for_room`
            makes submitters wait (default: one group, ``max_group_bets``).
    """

    def __init__(
        self,
        open_store: Callable[[], Store],
        *,
        max_group_bets: int = 4096,
        max_pending_bets: int | None = None,
    ) -> None:
        self._open_store = open_store
        self._max_group_bets = max_group_bets
        self._max_pending_bets = max_pending_bets or max_group_bets
        self._pending_bets = 0
        self._in_flight: list[tuple[PendingBatch, asyncio.Future[CommitResult]]] = []
        self._group_done = asyncio.Event()  # set after every group, for settle()
        self._room = asyncio.Event()
        self._room.set()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "lottery-store")
        self._store: Store | None = None
        self._pending: list[tuple[PendingBatch, asyncio.Future[CommitResult]]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # Why a lock, in a single-threaded event loop: every other piece of
        # shared state here (the pending list, the barrier's counter) changes
        # in plain synchronous code, which no other coroutine can interleave
        # with. A commit and the draw are different: each is a critical
        # section with an await in the middle (the store thread's work), and
        # other coroutines run during that await. The lock makes sure the
        # "drawn?" check and the draw it guards happen as one step (so two
        # callers cannot both draw), and that the store is never closed, nor
        # the draw made, halfway through a commit.
        self._lock = asyncio.Lock()
        self.commits = 0
        self.batches_committed = 0
        #: Set (under the lock) when the draw is made: later batches are LATE.
        self.drawn = False
        #: Called after each successful commit with its seconds and batch count
        #: (the metrics module observes commit latency through it).
        self.on_commit: Callable[[float, int], None] | None = None

    async def start(self) -> None:
        """Open the store on its thread and start the commit task."""
        try:
            self._store = await self._in_thread(self._open_store)
            self.drawn = await self.call(lambda s: s.drawn())
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self._task = asyncio.create_task(self._commit_loop(), name="lottery-committer")

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def call(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the store thread (reads, mark_done...)."""
        store = self._store
        assert store is not None, "Committer.start() was not awaited"
        return await self._in_thread(fn, store)

    async def wait_for_room(self) -> None:
        """Wait until the pending bets are under the bound (backpressure)."""
        while self._pending_bets >= self._max_pending_bets:
            self._room.clear()
            await self._room.wait()

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
        if self._pending_bets < self._max_pending_bets:
            self._room.set()
        return group

    async def _commit_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                group = self._take_group()
                self._in_flight = group
                async with self._lock:
                    results: list[CommitResult]
                    seconds = -1.0  # stays negative unless the commit succeeded
                    if self.drawn:  # the winners are known: a bet now cannot take part
                        results = [Outcome.LATE] * len(group)
                    else:
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
            results: list[CommitResult] = list(await self.call(methodcaller("commit", batches)))
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

    async def draw(self) -> dict[int, list[str]] | None:
        """Make the draw unless it was made already.

        Returns:
            Each agency's winning documents, or None if the draw had been made
            before (by another caller, or before a restart).
        """
        async with self._lock:
            if await self.call(lambda s: s.drawn()):
                self.drawn = True
                return None
            winners = await self.call(lambda s: s.draw())
            self.drawn = True
            return winners

    async def close(self) -> None:
        """Commit what is pending, then close the store and its thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        async with self._lock:
            if self._store is not None:
                await self.call(lambda s: s.close())
                self._store = None
        self._executor.shutdown(wait=True)
