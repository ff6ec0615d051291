"""`ThreadedStore`: a blocking `Store` on one thread of its own, awaited.

sqlite3 blocks, and an SQLite connection belongs to the thread that opened
it. So the store gets one worker thread for its whole life: it is opened
there, every call runs there, one at a time, and it is closed there. The
event loop only awaits. One thread also orders every call: a commit and the
draw can never overlap, which is half of the store's guarantee 3.

Progress reads and done marks are coalesced. When thousands of agencies
connect, or say DONE, at once, each would be a job of its own on that one
thread (a GIL hand-over there and back, and for a mark a transaction and an
fsync), queued ahead of the commits that acknowledge bets. Instead such a
call waits in a list, and one job takes every call of its kind waiting when
it runs: the marks in one call to the store's ``mark_done_many`` (one
transaction) when it has one. Order is kept: a call joins the job already
queued for its kind only if no other job was queued after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from .base import DrawState, Outcome, PendingBatch, Progress, Store

__all__ = ["ThreadedStore"]

T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")


class _Batch(Generic[A, R]):
    """Calls of one kind waiting for the store thread, made there by one job.

    ``work(store, items)`` runs on the store thread and returns one result
    per item, in order: a value, or the exception that call raises.
    """

    def __init__(self, work: Callable[[Store, list[A]], Sequence[R | Exception]]) -> None:
        self._work = work
        self._lock = threading.Lock()  # the loop adds, the store thread closes
        #: The calls of the last job queued for this kind, until it starts; and its number.
        self._open: list[tuple[A, asyncio.Future[R]]] | None = None
        self._open_job = 0

    def add(
        self, item: A, future: asyncio.Future[R], last_job: int
    ) -> list[tuple[A, asyncio.Future[R]]] | None:
        """Join the open job if it is the last one queued (``last_job``); else start a list.

        Returns the new list, which the caller must queue as job ``last_job + 1``
        (`run`), or None when ``item`` joined a job already queued.
        """
        with self._lock:
            if self._open is not None and self._open_job == last_job:
                self._open.append((item, future))
                return None
            self._open, self._open_job = [(item, future)], last_job + 1
            return self._open

    def abandon(self, calls: list[tuple[A, asyncio.Future[R]]]) -> None:
        """``calls`` will never run (their job could not be queued): close them to joiners."""
        with self._lock:
            if self._open is calls:
                self._open = None

    def run(
        self,
        store: Store,
        loop: asyncio.AbstractEventLoop,
        calls: list[tuple[A, asyncio.Future[R]]],
    ) -> None:
        """On the store thread: make ``calls`` at once; the results go to the loop."""
        with self._lock:
            if self._open is calls:
                self._open = None  # started: a newcomer needs a job of its own
        try:
            results = list(self._work(store, [item for item, _ in calls]))
        except Exception as exc:
            results = [exc] * len(calls)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_settle, [f for _, f in calls], results)


def _settle(futures: list[asyncio.Future[R]], results: list[R | Exception]) -> None:
    for future, result in zip(futures, results, strict=True):
        if future.done():  # its caller was cancelled meanwhile
            continue
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)


class ThreadedStore:
    """An `AsyncStore` over a `Store` that blocks. Build it with `open`."""

    def __init__(self, executor: concurrent.futures.ThreadPoolExecutor, store: Store) -> None:
        self._executor = executor
        self._store: Store | None = store
        self.round_id = store.round_id
        self._jobs = 0  # jobs queued on the thread so far: a batch joins only the last one
        self._progress_reads = _Batch[int, Progress](self._read_progress)
        self._done_marks = _Batch[int, None](self._make_marks)

    @classmethod
    async def open(cls, open_store: Callable[[], Store]) -> ThreadedStore:
        """Start the thread and open the store on it (``open_store()`` may raise)."""
        executor = concurrent.futures.ThreadPoolExecutor(1, "lottery-store")
        try:
            loop = asyncio.get_running_loop()
            store = await loop.run_in_executor(executor, open_store)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, store)

    async def call(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the store's thread (tests and fault injection use it)."""
        store = self._store
        if store is None:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        self._jobs += 1
        return await loop.run_in_executor(self._executor, functools.partial(fn, store))

    async def _batched(self, batch: _Batch[A, R], item: A) -> R:
        """``item``'s result from ``batch``'s next job, queued unless it is the last one queued."""
        store = self._store
        if store is None:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        calls = batch.add(item, future, self._jobs)
        if calls is not None:
            self._jobs += 1
            try:
                self._executor.submit(batch.run, store, loop, calls)
            except RuntimeError:  # the thread is shut down: nobody may join that job
                batch.abandon(calls)
                raise
        return await future

    def _read_progress(self, store: Store, agencies: list[int]) -> list[Progress | Exception]:
        out: list[Progress | Exception] = []
        for agency in agencies:
            try:
                out.append(store.progress(agency))
            except Exception as exc:
                out.append(exc)
        return out

    def _make_marks(self, store: Store, agencies: list[int]) -> list[Exception | None]:
        try:
            many = getattr(store, "mark_done_many", None)
            if many is not None:
                many(agencies)
            else:
                for agency in agencies:
                    store.mark_done(agency)
        except Exception as exc:  # every mark of the group fails: each DONE is refused
            return [exc] * len(agencies)
        return [None] * len(agencies)

    async def progress(self, agency: int) -> Progress:
        return await self._batched(self._progress_reads, agency)

    async def all_progress(self) -> dict[int, Progress]:
        return await self.call(lambda s: s.all_progress())

    async def round_date(self) -> str:
        return await self.call(lambda s: s.round_date())

    async def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        return await self.call(lambda s: s.commit(batches))

    async def mark_done(self, agency: int) -> None:
        await self._batched(self._done_marks, agency)

    async def done_agencies(self) -> set[int]:
        return await self.call(lambda s: s.done_agencies())

    async def drawn(self) -> bool:
        return await self.call(lambda s: s.drawn())

    async def draw(self) -> bool:
        return await self.call(lambda s: s.draw())

    async def winners(self) -> dict[int, list[str]]:
        return await self.call(lambda s: s.winners())

    async def draw_state(self) -> DrawState:
        return await self.call(lambda s: s.draw_state())

    async def commit_nonce(self, agency: int, commitment: bytes) -> bytes:
        return await self.call(lambda s: s.commit_nonce(agency, commitment))

    async def record_reveal(self, agency: int, nonce: bytes) -> bool:
        return await self.call(lambda s: s.record_reveal(agency, nonce))

    async def refuse_reveal(self, agency: int) -> None:
        await self.call(lambda s: s.refuse_reveal(agency))

    async def aclose(self) -> None:
        if self._store is None:
            return
        try:
            await self.call(lambda s: s.close())
        finally:
            self._store = None
            self._executor.shutdown(wait=True)
