"""`ThreadedStore`: a blocking `Store` on one thread of its own, awaited.

sqlite3 blocks, and an SQLite connection belongs to the thread that opened
it. So the store gets one worker thread for its whole life: it is opened
there, every call runs there, one at a time, and it is closed there. The
event loop only awaits. One thread also orders every call: a commit and the
draw can never overlap, which is half of the store's guarantee 3.

Done marks are coalesced: when thousands of agencies say DONE at once, each
mark would be a transaction of its own (an fsync each) queued on that one
thread, ahead of the commits that acknowledge bets. Instead a mark waits in
a list, and the first job to run on the thread takes every mark waiting by
then, in one call to the store's ``mark_done_many`` (one transaction) when it
has one; the later jobs find their mark made and return its outcome.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from .base import DrawState, Outcome, PendingBatch, Progress, Store

__all__ = ["ThreadedStore"]

T = TypeVar("T")


class ThreadedStore:
    """An `AsyncStore` over a `Store` that blocks. Build it with `open`."""

    def __init__(self, executor: concurrent.futures.ThreadPoolExecutor, store: Store) -> None:
        self._executor = executor
        self._store: Store | None = store
        self.round_id = store.round_id
        self._marks_lock = threading.Lock()
        #: Done marks asked for and not yet made, one token each (see the module docstring).
        self._marks_waiting: list[tuple[int, object]] = []
        #: What marks made by another call's job came to (None: made), by token.
        #: Only the store thread touches it.
        self._marks_made: dict[object, BaseException | None] = {}

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
        return await loop.run_in_executor(self._executor, functools.partial(fn, store))

    async def progress(self, agency: int) -> Progress:
        return await self.call(lambda s: s.progress(agency))

    async def all_progress(self) -> dict[int, Progress]:
        return await self.call(lambda s: s.all_progress())

    async def round_date(self) -> str:
        return await self.call(lambda s: s.round_date())

    async def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        return await self.call(lambda s: s.commit(batches))

    async def mark_done(self, agency: int) -> None:
        token = object()
        with self._marks_lock:
            self._marks_waiting.append((agency, token))
        await self.call(lambda s: self._make_marks(s, token))

    def _make_marks(self, store: Store, token: object) -> None:
        """On the store thread: make every waiting mark, or report ours if made already."""
        if token in self._marks_made:
            error = self._marks_made.pop(token)
        else:  # ours is still waiting (jobs run in order): make it with the others
            with self._marks_lock:
                waiting, self._marks_waiting = self._marks_waiting, []
            error = None
            try:
                many = getattr(store, "mark_done_many", None)
                if many is not None:
                    many([agency for agency, _ in waiting])
                else:
                    for agency, _ in waiting:
                        store.mark_done(agency)
            except Exception as exc:  # every mark of the group fails: each DONE is refused
                error = exc
            self._marks_made.update((other, error) for _, other in waiting if other is not token)
        if error is not None:
            raise error

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
