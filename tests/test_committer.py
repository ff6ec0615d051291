"""Committer: acknowledgements after commit, group commit, failures, draw, close, threads."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from lottery.committer import CommitResult, Committer
from lottery.errors import StoreError
from lottery.protocol import Record
from lottery.store import Outcome, PendingBatch, SQLiteStore

pytestmark = pytest.mark.timeout(30)

#: Longest a gate may stay closed before the fake store gives up (a test bug).
GATE_TIMEOUT = 10.0
#: How long a future must stay pending to count as "still pending".
STILL_PENDING = 0.05
#: Longest an expected result may take: a dead commit loop fails fast, not at the test timeout.
SETTLE_TIMEOUT = 5.0

T = TypeVar("T")


def rec(document: str, number: str = "1234") -> Record:
    return ("Ana", "Pérez", document, "1990-05-17", number)


def batch(agency: int, seq: int, bets: int = 1) -> PendingBatch:
    """A batch of ``bets`` bets, documents named after agency, sequence and index."""
    return PendingBatch(agency, seq, tuple(rec(f"{agency}{seq:03d}{i:03d}") for i in range(bets)))


class FakeStore:
    """An in-memory `Store` that records its calls and threads, and can block or fail."""

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.calls: list[str] = []
        self.commits: list[list[PendingBatch]] = []
        self.finished_commits = 0
        self.commit_entered = threading.Event()
        self.commit_gate = threading.Event()
        self.commit_gate.set()
        #: commit call index -> exception that call raises (after its gate).
        self.commit_failures: dict[int, BaseException] = {}
        #: (agency, seq) -> outcome; every other batch is STORED.
        self.outcomes: dict[tuple[int, int], Outcome] = {}
        self.draw_entered = threading.Event()
        self.draw_gate = threading.Event()
        self.draw_gate.set()
        self.draw_failures: list[BaseException] = []
        self.draw_calls = 0
        self.is_drawn = False
        self.done: set[int] = set()
        self.closed = False

    def release(self) -> None:
        """Open every gate, so the store thread can never stay blocked."""
        self.commit_gate.set()
        self.draw_gate.set()

    def _enter(self, name: str) -> None:
        self.threads.add(threading.get_ident())
        self.calls.append(name)
        assert not self.closed, f"{name} called on a closed store"

    def open(self) -> FakeStore:
        """The committer's ``open_store``: records the thread it is called on."""
        self._enter("open")
        return self

    def progress(self, agency: int) -> tuple[int, int]:
        self._enter("progress")
        return (0, 0)

    def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        self._enter("commit")
        index = len(self.commits)
        self.commits.append(list(batches))
        self.commit_entered.set()
        if not self.commit_gate.wait(GATE_TIMEOUT):
            raise AssertionError("the test never opened the commit gate")
        failure = self.commit_failures.get(index)
        if failure is not None:
            raise failure
        self.finished_commits += 1
        return [self.outcomes.get((b.agency, b.seq), Outcome.STORED) for b in batches]

    def mark_done(self, agency: int) -> None:
        self._enter("mark_done")
        self.done.add(agency)

    def done_agencies(self) -> set[int]:
        self._enter("done_agencies")
        return set(self.done)

    def drawn(self) -> bool:
        self._enter("drawn")
        return self.is_drawn

    def draw(self) -> dict[int, list[str]]:
        self._enter("draw")
        self.draw_calls += 1
        self.draw_entered.set()
        if not self.draw_gate.wait(GATE_TIMEOUT):
            raise AssertionError("the test never opened the draw gate")
        if self.draw_failures:
            raise self.draw_failures.pop(0)
        self.is_drawn = True
        return {1: ["7574"]}

    def winners(self) -> dict[int, list[str]]:
        self._enter("winners")
        return {1: ["7574"]} if self.is_drawn else {}

    def bets(self) -> Iterator[tuple[int, str, str, str, str, int]]:
        self._enter("bets")
        return iter(())

    def close(self) -> None:
        self._enter("close")
        self.closed = True


async def wait_for_thread_event(event: threading.Event) -> None:
    """Await a threading.Event set by the store thread, without blocking the loop."""
    assert await asyncio.to_thread(event.wait, GATE_TIMEOUT), "the store never got there"


async def settled(aw: Awaitable[T]) -> T:
    """Await ``aw``, failing the test if it does not complete in SETTLE_TIMEOUT."""
    async with asyncio.timeout(SETTLE_TIMEOUT):
        return await aw


async def still_pending(*aws: asyncio.Future[object]) -> bool:
    """Whether none of ``aws`` completes within a short while."""
    done, _ = await asyncio.wait(aws, timeout=STILL_PENDING)
    return not done


@pytest.fixture
def fake() -> Iterator[FakeStore]:
    store = FakeStore()
    yield store
    store.release()


MakeCommitter = Callable[..., Awaitable[Committer]]


@pytest.fixture
async def make_committer(fake: FakeStore) -> AsyncIterator[MakeCommitter]:
    """Build and start committers over ``fake``; every one is closed at teardown."""
    made: list[Committer] = []

    async def make(**kwargs: int) -> Committer:
        committer = Committer(fake.open, **kwargs)
        made.append(committer)
        await committer.start()
        return committer

    yield make
    fake.release()
    for committer in made:
        await settled(committer.close())


@pytest.fixture
async def committer(make_committer: MakeCommitter) -> Committer:
    return await make_committer()


# -- acknowledgement after commit ---------------------------------------------


async def test_batch_is_acknowledged_only_after_its_commit(
    committer: Committer, fake: FakeStore
) -> None:
    """A batch is acknowledged only after its transaction committed."""
    fake.commit_gate.clear()
    finished_at_ack: list[int] = []
    future = committer.submit(batch(1, 1))
    future.add_done_callback(lambda _: finished_at_ack.append(fake.finished_commits))

    await wait_for_thread_event(fake.commit_entered)
    assert await still_pending(future)
    assert fake.finished_commits == 0

    fake.commit_gate.set()
    assert await settled(future) == Outcome.STORED
    assert finished_at_ack == [1]
    assert committer.commits == 1
    assert committer.batches_committed == 1


async def test_each_future_gets_its_own_batch_outcome(
    committer: Committer, fake: FakeStore
) -> None:
    """Each batch's future resolves to the store's outcome for that very batch."""
    fake.outcomes = {(1, 1): Outcome.DUPLICATE, (3, 7): Outcome.GAP}
    batches = [batch(1, 1), batch(2, 1), batch(3, 7), batch(1, 2)]
    futures = [committer.submit(b) for b in batches]
    results = await settled(asyncio.gather(*futures))
    assert results == [Outcome.DUPLICATE, Outcome.STORED, Outcome.GAP, Outcome.STORED]
    assert fake.commits == [batches]


# -- group commit -------------------------------------------------------------


async def test_batches_arriving_during_a_commit_share_the_next_one(
    committer: Committer, fake: FakeStore
) -> None:
    """Group commit: batches that arrive while a commit is running go into the next single
    transaction."""
    a, b, c, d = batch(1, 1), batch(2, 1), batch(3, 1), batch(1, 2)
    fake.commit_gate.clear()
    fa = committer.submit(a)
    await wait_for_thread_event(fake.commit_entered)
    later = [committer.submit(x) for x in (b, c, d)]
    assert await still_pending(fa, *later)

    fake.commit_gate.set()
    assert await settled(asyncio.gather(fa, *later)) == [Outcome.STORED] * 4
    assert fake.commits == [[a], [b, c, d]]
    assert committer.commits == 2
    assert committer.batches_committed == 4


async def test_max_group_bets_caps_a_group(make_committer: MakeCommitter, fake: FakeStore) -> None:
    """No group passes max_group_bets bets unless it is one oversized batch; order is kept."""
    committer = await make_committer(max_group_bets=10)
    fake.commit_gate.clear()
    first = committer.submit(batch(9, 1, bets=2))
    await wait_for_thread_event(fake.commit_entered)

    queued = [
        batch(1, 1, bets=4),
        batch(2, 1, bets=4),
        batch(3, 1, bets=4),
        batch(4, 1, bets=6),
        batch(5, 1, bets=25),  # larger than the cap: goes alone
        batch(6, 1, bets=10),  # exactly the cap
        batch(7, 1, bets=1),
        batch(8, 1, bets=9),
    ]
    futures = [committer.submit(b) for b in queued]
    fake.commit_gate.set()
    assert await settled(asyncio.gather(first, *futures)) == [Outcome.STORED] * 9

    groups = fake.commits[1:]
    assert [b for group in groups for b in group] == queued
    assert [[b.agency for b in group] for group in groups] == [[1, 2], [3, 4], [5], [6], [7, 8]]
    for group in groups:
        assert len(group) == 1 or sum(len(b.records) for b in group) <= 10


async def test_pending_bets_are_bounded(make_committer: MakeCommitter, fake: FakeStore) -> None:
    """Once max_pending_bets wait for a commit, wait_for_room blocks until a group is taken."""
    committer = await make_committer(max_group_bets=4, max_pending_bets=4)
    fake.commit_gate.clear()
    first = committer.submit(batch(1, 1, bets=4))
    await wait_for_thread_event(fake.commit_entered)  # the first group is taken: room again
    await settled(committer.wait_for_room())
    queued = [committer.submit(batch(2, 1, bets=2)), committer.submit(batch(3, 1, bets=2))]
    room = asyncio.ensure_future(committer.wait_for_room())
    assert await still_pending(room)
    fake.commit_gate.set()  # the first commit ends; the loop takes the next group
    await settled(room)
    assert await settled(asyncio.gather(first, *queued)) == [Outcome.STORED] * 3


# -- failures -----------------------------------------------------------------


async def test_store_error_resolves_every_future_of_the_group(
    committer: Committer, fake: FakeStore
) -> None:
    """A StoreError from commit is every future's result, and the next group is still served."""
    error = StoreError("disk full")
    fake.commit_failures[0] = error
    group = [committer.submit(batch(a, 1)) for a in (1, 2, 3)]
    results = await settled(asyncio.gather(*group))
    assert all(result is error for result in results)
    assert all(f.exception() is None for f in group)
    assert committer.commits == 0

    assert await settled(committer.submit(batch(1, 1))) == Outcome.STORED
    assert len(fake.commits) == 2
    assert committer.commits == 1


async def test_unexpected_error_does_not_kill_the_commit_loop(
    committer: Committer, fake: FakeStore
) -> None:
    """An unexpected error in commit refuses its group with a StoreError; the loop goes on."""
    fake.commit_failures[0] = RuntimeError("a bug")
    fake.commit_failures[1] = ValueError("another bug")
    first = await settled(
        asyncio.gather(committer.submit(batch(1, 1)), committer.submit(batch(2, 1)))
    )
    assert all(isinstance(r, StoreError) and "RuntimeError" in str(r) for r in first)
    second = await settled(committer.submit(batch(1, 1)))
    assert isinstance(second, StoreError)
    assert "ValueError" in str(second)

    assert await settled(committer.submit(batch(1, 1))) == Outcome.STORED
    assert len(fake.commits) == 3


async def test_cancelled_future_does_not_disturb_its_group(
    committer: Committer, fake: FakeStore
) -> None:
    """A batch whose waiter went away is still committed and the rest of its group is acked."""
    fake.commit_gate.clear()
    gone = committer.submit(batch(1, 1))
    kept = committer.submit(batch(2, 1))
    await wait_for_thread_event(fake.commit_entered)
    gone.cancel()
    fake.commit_gate.set()
    assert await settled(kept) == Outcome.STORED
    assert fake.commits == [[batch(1, 1), batch(2, 1)]]
    assert await settled(committer.submit(batch(1, 2))) == Outcome.STORED


# -- the draw -----------------------------------------------------------------


async def test_concurrent_draws_run_the_store_draw_once(
    committer: Committer, fake: FakeStore
) -> None:
    """draw() runs the store's draw exactly once when many tasks call it at the same time."""
    results = await settled(asyncio.gather(*(committer.draw() for _ in range(20))))
    assert fake.draw_calls == 1
    assert [r for r in results if r is not None] == [{1: ["7574"]}]
    assert results.count(None) == 19
    assert await committer.draw() is None
    assert fake.draw_calls == 1


async def test_draw_callers_wait_for_the_running_draw(
    committer: Committer, fake: FakeStore
) -> None:
    """Callers arriving while the draw runs wait for it and then get None, never a second draw."""
    fake.draw_gate.clear()
    first = asyncio.create_task(committer.draw())
    await wait_for_thread_event(fake.draw_entered)
    others = [asyncio.create_task(committer.draw()) for _ in range(5)]
    assert await still_pending(first, *others)
    assert fake.draw_calls == 1

    fake.draw_gate.set()
    assert await settled(first) == {1: ["7574"]}
    assert await settled(asyncio.gather(*others)) == [None] * 5
    assert fake.draw_calls == 1


async def test_draw_after_a_restart_that_drew_returns_none(
    committer: Committer, fake: FakeStore
) -> None:
    """If the store already holds a draw, draw() returns None without drawing again."""
    fake.is_drawn = True
    assert await committer.draw() is None
    assert fake.draw_calls == 0


async def test_failed_draw_can_be_retried(committer: Committer, fake: FakeStore) -> None:
    """A draw that raises StoreError reaches its caller and a later draw can still be made."""
    fake.draw_failures.append(StoreError("read-only"))
    with pytest.raises(StoreError, match="read-only"):
        await committer.draw()
    assert await committer.draw() == {1: ["7574"]}
    assert fake.draw_calls == 2


async def test_draw_waits_for_a_running_commit(committer: Committer, fake: FakeStore) -> None:
    """The draw is not made halfway through a commit: it waits until the commit is acknowledged."""
    fake.commit_gate.clear()
    acked = committer.submit(batch(1, 1))
    await wait_for_thread_event(fake.commit_entered)
    drawing = asyncio.create_task(committer.draw())
    assert await still_pending(drawing)
    assert "drawn" not in fake.calls[fake.calls.index("commit") :]  # start() asked once

    fake.commit_gate.set()
    assert await settled(drawing) == {1: ["7574"]}
    assert acked.done()
    assert fake.calls.index("commit") < fake.calls.index("draw")


# -- close --------------------------------------------------------------------


async def test_close_commits_pending_batches_then_closes_the_store(
    committer: Committer, fake: FakeStore
) -> None:
    """close() commits every pending batch first, then closes the store."""
    futures = [committer.submit(batch(a, 1)) for a in (1, 2)]
    await settled(committer.close())
    assert [f.result() for f in futures] == [Outcome.STORED, Outcome.STORED]
    assert fake.calls == ["open", "drawn", "commit", "close"]
    assert fake.closed


async def test_close_waits_for_the_running_commit_and_the_queue(
    committer: Committer, fake: FakeStore
) -> None:
    """close() during a commit lets it and the queued batches finish before closing the store."""
    fake.commit_gate.clear()
    a = committer.submit(batch(1, 1))
    await wait_for_thread_event(fake.commit_entered)
    b = committer.submit(batch(2, 1))
    closing = asyncio.create_task(committer.close())
    assert await still_pending(closing, a, b)
    assert not fake.closed

    late = committer.submit(batch(3, 1))
    assert late.done()
    assert isinstance(late.result(), StoreError)

    fake.commit_gate.set()
    await settled(closing)
    assert (a.result(), b.result()) == (Outcome.STORED, Outcome.STORED)
    assert fake.commits == [[batch(1, 1)], [batch(2, 1)]]
    assert fake.calls == ["open", "drawn", "commit", "commit", "close"]


async def test_submit_after_close_resolves_to_store_error(
    committer: Committer, fake: FakeStore
) -> None:
    """A batch submitted after close() resolves to a StoreError and never reaches the store."""
    await settled(committer.close())
    result: CommitResult = await committer.submit(batch(1, 1))
    assert isinstance(result, StoreError)
    assert fake.commits == []


async def test_close_twice_is_harmless(committer: Committer, fake: FakeStore) -> None:
    """Closing an already closed committer does nothing more."""
    await settled(committer.close())
    await settled(committer.close())
    assert fake.calls.count("close") == 1


# -- threads ------------------------------------------------------------------


async def test_store_is_opened_and_used_on_one_thread_off_the_loop(
    committer: Committer, fake: FakeStore
) -> None:
    """Every store call, from opening to closing, runs on one thread that is not the loop's."""
    loop_thread = threading.get_ident()
    await settled(committer.submit(batch(1, 1)))
    await committer.call(lambda s: s.mark_done(1))
    assert await committer.call(lambda s: s.done_agencies()) == {1}
    assert await committer.call(lambda s: s.progress(1)) == (0, 0)
    await committer.draw()
    await settled(committer.close())

    assert fake.calls[0] == "open"
    assert fake.calls[-1] == "close"
    assert len(fake.threads) == 1
    assert loop_thread not in fake.threads


# -- with the real store ------------------------------------------------------


async def test_committer_over_sqlite_store(tmp_path: Path) -> None:
    """Over a real SQLiteStore, outcomes, progress, draw and close work end to end."""
    committer = Committer(functools.partial(SQLiteStore, tmp_path, 2, 7574))
    await committer.start()
    try:
        first = committer.submit(PendingBatch(1, 1, [rec("1", "7574"), rec("2")]))
        resent = committer.submit(PendingBatch(1, 1, [rec("1", "7574"), rec("2")]))
        gap = committer.submit(PendingBatch(2, 3, [rec("3")]))
        assert await settled(asyncio.gather(first, resent, gap)) == [
            Outcome.STORED,
            Outcome.DUPLICATE,
            Outcome.GAP,
        ]
        assert await committer.call(lambda s: s.progress(1)) == (1, 2)
        assert await committer.draw() == {1: ["1"]}
        assert await committer.draw() is None
        pending = committer.submit(PendingBatch(2, 1, [rec("4")]))
    finally:
        await settled(committer.close())
    assert pending.result() == Outcome.LATE  # after the draw: not stored

    reopened = SQLiteStore(tmp_path, 2, 7574)
    try:
        assert reopened.progress(2) == (0, 0)
        assert reopened.drawn()
    finally:
        reopened.close()


async def test_batches_after_the_draw_are_late(committer: Committer, fake: FakeStore) -> None:
    """Once the draw is made, a batch still waiting for a commit is not stored: it is LATE."""
    assert await settled(committer.draw()) == {1: ["7574"]}
    assert await settled(committer.submit(batch(1, 1))) == Outcome.LATE
    assert "commit" not in fake.calls
