"""Group commit: many agencies' batches, one durable transaction.

`Committer` does group commits and nothing else. Connection handlers call
`submit` (through the `Round`) with a batch and await the returned future; a
background task takes *every* batch pending at that moment and commits them in
one transaction (`AsyncStore.commit`). Batches that arrive while that commit runs wait for the next
one. With many agencies sending at once, one fsync then covers many batches,
and no batch is acknowledged before the transaction holding it is on disk.

A group is capped at `max_group_bets` bets (8192 by default) so that, with
hundreds of agencies, one huge transaction cannot hold every acknowledgement
back for long. The pending list is bounded too: once a group's worth of bets
waits for a commit, handlers await `wait_for_room` before reading more, and the
backpressure reaches the agencies through TCP. They wait in line, each saying
how many bets it brings, and room wakes as many as it holds, in order (their
bets reserved until they submit): with 10,000 connections waiting, a commit
must not wake them all to let forty through, nor one per event-loop turn (a
turn with thousands of connections busy takes milliseconds, and one woken
waiter a turn made a line of forty wait 100-200 ms). A batch then waits for at most
the running commit and its own, however many agencies send at once (measured
with 1,000 agencies: p99 from reading a batch to its ack about 32 ms; bigger
groups raise it, see docs/PERFORMANCE.md).

A store whose commits may run concurrently (PostgreSQL: one connection each,
the database overlapping one group's work with the next one's) sets
``commit_lanes`` above 1, and the committer keeps up to that many groups in
flight. Groups in flight never share an agency: two transactions may take an
agency's row lock in either order, so a later batch could be judged before an
earlier one (a false GAP). A batch whose agency is in flight waits, and so do
that agency's later ones; while lanes are free, a group takes only its share
of the waiting agencies, leaving the rest for the next lane.
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
            makes submitters wait (default: one group, ``max_group_bets``, per lane).
        lanes: groups in flight at once (default: the store's ``commit_lanes``, else 1).
    """

    def __init__(
        self,
        store: AsyncStore,
        *,
        max_group_bets: int = 8192,
        max_pending_bets: int | None = None,
        lanes: int | None = None,
    ) -> None:
        self._store = store
        self._max_group_bets = max_group_bets
        self._lanes = max(1, lanes or int(getattr(store, "commit_lanes", 1)))
        self._max_pending_bets = max_pending_bets or max_group_bets * self._lanes
        self._pending_bets = 0
        self._in_flight: list[tuple[PendingBatch, asyncio.Future[CommitResult]]] = []
        #: Agencies with a batch in a group in flight, and how many groups are.
        self._busy: set[int] = set()
        self._running = 0
        self._group_done = asyncio.Event()  # set after every group, for settle()
        #: Handlers waiting for room, in arrival order, with their bets (see `wait_for_room`).
        self._room_waiters: collections.deque[tuple[asyncio.Future[None], int]] = (
            collections.deque()
        )
        #: Bets of handlers woken for room that have not submitted yet.
        self._reserved_bets = 0
        self._pending: list[tuple[PendingBatch, asyncio.Future[CommitResult]]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.batches_committed = 0
        #: Called after each successful commit with its seconds and batch count
        #: (the metrics module observes commit latency through it).
        self.on_commit: Callable[[float, int], None] | None = None

    @property
    def lanes(self) -> int:
        """Groups this committer keeps in flight at once."""
        return self._lanes

    def start(self) -> None:
        """Start the commit task (in the running loop)."""
        self._task = asyncio.create_task(self._commit_loop(), name="lottery-committer")

    async def wait_for_room(self, bets: int = 1) -> None:
        """Wait until the pending bets are under the bound (backpressure), in line.

        ``bets`` is the size of the batch the caller will submit: room is kept
        for it from the moment it is woken. The caller must `submit` as soon as
        this returns, with no await in between.
        """
        if self._pending_bets + self._reserved_bets < self._max_pending_bets and (
            not self._room_waiters
        ):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (waiter, bets)
        self._room_waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._reserved_bets -= bets  # woken, but will not submit: pass it on
                self._wake_next()
            else:  # still in line, unless `_wake_next` dropped it already
                with contextlib.suppress(ValueError):
                    self._room_waiters.remove(entry)
            raise
        # Its submit follows at once (no await in between) and counts the bets.
        self._reserved_bets -= bets

    def _wake_next(self) -> None:
        """Wake the handlers first in line while there is room for their batches."""
        waiters = self._room_waiters
        while waiters and self._pending_bets + self._reserved_bets < self._max_pending_bets:
            waiter, bets = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._reserved_bets += bets

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
        if self._lanes > 1:
            return self._take_share()
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

    def _take_share(self) -> list[tuple[PendingBatch, asyncio.Future[CommitResult]]]:
        """A group of agencies no group in flight holds, in arrival order (see the module
        docstring); it leaves a share of the waiting agencies to the other free lanes."""
        busy = self._busy
        waiting = {batch.agency for batch, _ in self._pending} - busy
        share = -(-len(waiting) // (self._lanes - self._running))  # rounded up
        chosen: set[int] = set()
        group: list[tuple[PendingBatch, asyncio.Future[CommitResult]]] = []
        rest: list[tuple[PendingBatch, asyncio.Future[CommitResult]]] = []
        size = 0
        full = False
        for item in self._pending:
            batch = item[0]
            taken_by_other = batch.agency in busy or (
                batch.agency not in chosen and len(chosen) >= share
            )
            if full or taken_by_other:
                rest.append(item)
            elif group and size + len(batch.records) > self._max_group_bets:
                full = True  # and every later batch waits too: each agency keeps its order
                rest.append(item)
            else:
                chosen.add(batch.agency)
                group.append(item)
                size += len(batch.records)
        self._pending = rest
        self._pending_bets -= size
        if group:
            self._wake_next()
        return group

    async def _commit_loop(self) -> None:
        if self._lanes > 1:
            await self._lane_loop()
            return
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
                self._in_flight = []
                self._finish(group, results, seconds)
            if self._closing:
                return

    async def _lane_loop(self) -> None:
        """Up to ``lanes`` groups in flight, each its own task, no agency in two."""
        async with asyncio.TaskGroup() as lanes:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._running < self._lanes and (group := self._take_group()):
                    self._running += 1
                    self._busy.update(batch.agency for batch, _ in group)
                    self._in_flight.extend(group)
                    lanes.create_task(self._lane(group))
                if self._closing and not self._pending and not self._running:
                    return

    async def _lane(self, group: list[tuple[PendingBatch, asyncio.Future[CommitResult]]]) -> None:
        try:
            results, seconds = await self._commit_group(group)
        finally:
            done = {id(item) for item in group}
            self._in_flight = [item for item in self._in_flight if id(item) not in done]
            self._busy.difference_update(batch.agency for batch, _ in group)
            self._running -= 1
            self._wakeup.set()  # the agencies it held may have batches waiting
        self._finish(group, results, seconds)

    def _finish(
        self,
        group: list[tuple[PendingBatch, asyncio.Future[CommitResult]]],
        results: list[CommitResult],
        seconds: float,
    ) -> None:
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():  # its connection may have been cancelled
                future.set_result(result)
        self._group_done.set()
        # After the futures: a failing observer must not turn a commit
        # that happened into refused batches.
        if seconds >= 0 and self.on_commit is not None:
            with contextlib.suppress(Exception):
                self.on_commit(seconds, len(group))

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
