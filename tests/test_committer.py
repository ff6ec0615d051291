"""Committer: acknowledgements after commit, group commit, failures, close."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from lottery.committer import CommitResult, Committer
from lottery.errors import StoreError
from lottery.store import Outcome, PendingBatch, SQLiteStore, ThreadedStore

from .fake_store import (
    FakeStore,
    batch,
    rec,
    settled,
    still_pending,
    wait_for_thread_event,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def fake() -> Iterator[FakeStore]:
    store = FakeStore()
    yield store
    store.release()


MakeCommitter = Callable[..., Awaitable[Committer]]


@pytest.fixture
async def threaded(fake: FakeStore) -> AsyncIterator[ThreadedStore]:
    """``fake`` on its own thread, as the server runs a blocking store."""
    store = await ThreadedStore.open(fake.open)
    yield store
    fake.release()
    await settled(store.aclose())


@pytest.fixture
async def make_committer(fake: FakeStore, threaded: ThreadedStore) -> AsyncIterator[MakeCommitter]:
    """Build and start committers over ``fake``; every one is closed at teardown."""
    made: list[Committer] = []
    store = threaded

    async def make(**kwargs: int) -> Committer:
        committer = Committer(store, **kwargs)
        made.append(committer)
        committer.start()
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


async def test_room_wakes_waiters_in_line_one_at_a_time(
    make_committer: MakeCommitter, fake: FakeStore
) -> None:
    """Room wakes the first in line only; its submit wakes the next while room is left."""
    committer = await make_committer(max_group_bets=4, max_pending_bets=4)
    fake.commit_gate.clear()
    first = committer.submit(batch(1, 1, bets=4))
    await wait_for_thread_event(fake.commit_entered)  # taken: 0 pending, but the commit holds
    queued = [committer.submit(batch(2, 1, bets=4))]  # full again
    waiters = [asyncio.ensure_future(committer.wait_for_room()) for _ in range(3)]
    assert await still_pending(asyncio.gather(*waiters))
    fake.commit_gate.set()  # the next group is taken: room, and every commit goes through
    await settled(waiters[0])
    # Room is left, but the next in line waits until the woken one has submitted.
    assert await still_pending(asyncio.gather(*waiters[1:]))
    queued.append(committer.submit(batch(3, 1, bets=2)))
    await settled(waiters[1])
    queued.append(committer.submit(batch(4, 1, bets=2)))
    await settled(waiters[2])
    assert await settled(asyncio.gather(first, *queued)) == [Outcome.STORED] * 4


async def test_a_waiter_cancelled_in_line_leaves_it(
    make_committer: MakeCommitter, fake: FakeStore
) -> None:
    """A handler cancelled while waiting for room does not take the next one's turn."""
    committer = await make_committer(max_group_bets=4, max_pending_bets=4)
    fake.commit_gate.clear()
    first = committer.submit(batch(1, 1, bets=4))
    await wait_for_thread_event(fake.commit_entered)
    second = committer.submit(batch(2, 1, bets=4))  # full
    gone, waiting = (asyncio.ensure_future(committer.wait_for_room()) for _ in range(2))
    assert await still_pending(asyncio.gather(gone, waiting))
    gone.cancel()
    fake.commit_gate.set()  # room: the one still in line is woken
    await settled(waiting)
    assert gone.cancelled()
    assert await settled(asyncio.gather(first, second)) == [Outcome.STORED] * 2


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


# -- close --------------------------------------------------------------------


async def test_close_commits_pending_batches_and_leaves_the_store_open(
    committer: Committer, fake: FakeStore
) -> None:
    """close() commits every pending batch first; the store is its owner's to close."""
    futures = [committer.submit(batch(a, 1)) for a in (1, 2)]
    await settled(committer.close())
    assert [f.result() for f in futures] == [Outcome.STORED, Outcome.STORED]
    assert fake.calls == ["open", "commit"]
    assert not fake.closed


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

    late = committer.submit(batch(3, 1))
    assert late.done()
    assert isinstance(late.result(), StoreError)

    fake.commit_gate.set()
    await settled(closing)
    assert (a.result(), b.result()) == (Outcome.STORED, Outcome.STORED)
    assert fake.commits == [[batch(1, 1)], [batch(2, 1)]]
    assert fake.calls == ["open", "commit", "commit"]


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
    committer.submit(batch(1, 1))
    await settled(committer.close())
    await settled(committer.close())
    assert fake.calls == ["open", "commit"]


# -- the store's thread -----------------------------------------------------


async def test_store_is_opened_and_used_on_one_thread_off_the_loop(fake: FakeStore) -> None:
    """Every store call, from opening to closing, runs on one thread that is not the loop's."""
    loop_thread = threading.get_ident()
    store = await ThreadedStore.open(fake.open)
    committer = Committer(store)
    committer.start()
    await settled(committer.submit(batch(1, 1)))
    await store.mark_done(1)
    assert await store.done_agencies() == {1}
    assert (await store.progress(1))[:2] == (0, 0)
    assert await store.draw() is True
    await settled(committer.close())
    await settled(store.aclose())
    await settled(store.aclose())  # twice is harmless

    assert fake.calls[0] == "open"
    assert fake.calls[-1] == "close"
    assert fake.calls.count("close") == 1
    assert len(fake.threads) == 1
    assert loop_thread not in fake.threads


async def test_a_commit_and_the_draw_never_overlap(committer: Committer, fake: FakeStore) -> None:
    """The draw waits on the store's thread until a running commit is done."""
    fake.commit_gate.clear()
    acked = committer.submit(batch(1, 1))
    await wait_for_thread_event(fake.commit_entered)
    drawing = asyncio.ensure_future(committer._store.draw())
    assert await still_pending(drawing)
    fake.commit_gate.set()
    assert await settled(drawing) is True
    assert acked.done()
    assert fake.calls.index("commit") < fake.calls.index("draw")


async def test_batches_after_the_draw_are_late(committer: Committer, fake: FakeStore) -> None:
    """Once the store holds the draw, a batch still waiting for a commit is LATE, not stored."""
    fake.is_drawn = True
    assert await settled(committer.submit(batch(1, 1))) == Outcome.LATE
    assert fake.finished_commits == 0


# -- with the real store ------------------------------------------------------


async def test_committer_over_sqlite_store(tmp_path: Path) -> None:
    """Over a real SQLiteStore, outcomes, progress, draw and LATE work end to end."""
    store = await ThreadedStore.open(functools.partial(SQLiteStore, tmp_path, 2, 7574))
    committer = Committer(store)
    committer.start()
    try:
        first = committer.submit(PendingBatch(1, 1, [rec("1", "7574"), rec("2")]))
        resent = committer.submit(PendingBatch(1, 1, [rec("1", "7574"), rec("2")]))
        gap = committer.submit(PendingBatch(2, 3, [rec("3")]))
        assert await settled(asyncio.gather(first, resent, gap)) == [
            Outcome.STORED,
            Outcome.DUPLICATE,
            Outcome.GAP,
        ]
        assert (await store.progress(1))[:2] == (1, 2)
        assert await store.draw() is True
        assert await store.draw() is False
        assert await store.winners() == {1: ["1"]}
        pending = committer.submit(PendingBatch(2, 1, [rec("4")]))
    finally:
        await settled(committer.close())
        await settled(store.aclose())
    assert pending.result() == Outcome.LATE  # after the draw: not stored

    reopened = SQLiteStore(tmp_path, 2, 7574)
    try:
        assert reopened.progress(2)[:2] == (0, 0)
        assert reopened.drawn()
    finally:
        reopened.close()
