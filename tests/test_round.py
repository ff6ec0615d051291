"""Round: the draw made once, the barrier, who speaks for an agency, status from memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from lottery.committer import Committer
from lottery.errors import ErrorCode, StoreError
from lottery.round import Round, WinnersWait
from lottery.store import Outcome, ThreadedStore

from .fake_store import FakeStore, batch, settled, still_pending, wait_for_thread_event

pytestmark = pytest.mark.timeout(30)

MakeRound = Callable[..., Awaitable[Round]]


@pytest.fixture
def fake() -> FakeStore:
    return FakeStore()


@pytest.fixture
async def make_round(fake: FakeStore) -> AsyncIterator[MakeRound]:
    """Build rounds over ``fake`` (on its thread, with a committer); all closed at teardown."""
    store = await ThreadedStore.open(fake.open)
    committer = Committer(store)
    committer.start()
    made: list[Round] = []

    async def make(agencies: int = 2, **kwargs: float) -> Round:
        round_ = await Round.load(store, committer, agencies, **kwargs)
        made.append(round_)
        return round_

    yield make
    fake.release()
    for round_ in made:
        round_.shutdown()
        await settled(round_.wait_closed())
    await settled(committer.close())
    await settled(store.aclose())


class Speaker:
    """A stand-in connection: records that the round stopped it."""

    def __init__(self) -> None:
        self.stopped = False

    def stop_reading(self) -> None:
        self.stopped = True


# -- the draw -----------------------------------------------------------------


async def test_concurrent_draws_run_the_store_draw_once(
    make_round: MakeRound, fake: FakeStore
) -> None:
    """draw() records the draw exactly once when many tasks call it at the same time."""
    round_ = await make_round()
    await settled(asyncio.gather(*(round_.draw() for _ in range(20))))
    await round_.draw()
    assert fake.draw_calls == 1
    assert round_.drawn


async def test_draw_callers_wait_for_the_running_draw(
    make_round: MakeRound, fake: FakeStore
) -> None:
    """Callers arriving while the draw runs wait for it, then find it made: never a second draw."""
    round_ = await make_round()
    fake.draw_gate.clear()
    first = asyncio.create_task(round_.draw())
    await wait_for_thread_event(fake.draw_entered)
    others = [asyncio.create_task(round_.draw()) for _ in range(5)]
    assert await still_pending(first, *others)
    fake.draw_gate.set()
    await settled(asyncio.gather(first, *others))
    assert fake.draw_calls == 1
    assert round_.drawn


async def test_a_round_loaded_after_the_draw_knows_its_winners(
    make_round: MakeRound, fake: FakeStore
) -> None:
    """A round rebuilt from a store that holds the draw is drawn at once and never draws again."""
    fake.is_drawn = True
    round_ = await make_round(1)
    assert round_.drawn
    assert await settled(round_.winners(1, timeout=0)) == ("7574",)
    await round_.draw()
    assert fake.draw_calls == 0


async def test_a_round_loaded_with_every_agency_done_draws_at_once(
    make_round: MakeRound, fake: FakeStore
) -> None:
    """If every agency was done when the server stopped, loading the round makes the draw."""
    fake.done = {1, 2}
    round_ = await make_round(2)
    assert round_.drawn
    assert fake.draw_calls == 1


async def test_a_failed_draw_is_logged_and_can_be_made_again(
    make_round: MakeRound, fake: FakeStore
) -> None:
    """A draw the store refuses leaves the round undrawn; the next winners query draws again."""
    round_ = await make_round(1)
    fake.draw_failures.append(StoreError("read-only"))
    await round_.agency_done(1)
    assert round_.barrier.opened and not round_.drawn
    assert await settled(round_.winners(1, timeout=1)) == ("7574",)
    assert fake.draw_calls == 2


async def test_the_last_done_agency_makes_the_draw(make_round: MakeRound, fake: FakeStore) -> None:
    """The draw is made when the N-th distinct agency is done, not before, and wakes waiters."""
    round_ = await make_round(2)
    waiting = asyncio.create_task(round_.winners(2, timeout=5))
    await round_.agency_done(1)
    await round_.agency_done(1)  # a repeated DONE counts once
    assert not round_.drawn
    assert await still_pending(waiting)
    await round_.agency_done(2)
    assert round_.drawn
    assert await settled(waiting) == ()
    assert fake.done == {1, 2}


async def test_a_winners_query_waits_out_the_fault_draw_delay(
    make_round: MakeRound, fake: FakeStore
) -> None:
    """Inside the chaos hook's draw delay a winners query does not make the draw itself.

    The delay is there so a kill can land between the barrier and the draw;
    a query that drew at once (as it retries a failed draw) took it away.
    """
    round_ = await make_round(1, fault_draw_delay=60.0)
    done = asyncio.create_task(round_.agency_done(1))
    for _ in range(1000):  # the done mark is stored on the store's thread: let it finish
        if round_.barrier.opened:
            break
        await asyncio.sleep(0.001)
    assert not done.done()  # in the delay
    assert round_.barrier.opened and not round_.drawn
    assert await settled(round_.winners(1, timeout=0.05)) is WinnersWait.NOT_READY
    assert fake.draw_calls == 0
    done.cancel()


async def test_winners_before_the_draw_are_not_ready(make_round: MakeRound) -> None:
    """A winners query that outwaits its timeout is answered NOT_READY."""
    round_ = await make_round(2)
    assert await settled(round_.winners(1, timeout=0.01)) is WinnersWait.NOT_READY


async def test_shutdown_wakes_winners_queries(make_round: MakeRound) -> None:
    """Shutting down answers every waiting winners query with SHUTTING_DOWN."""
    round_ = await make_round(2)
    waiting = asyncio.create_task(round_.winners(1, timeout=5))
    assert await still_pending(waiting)
    round_.shutdown()
    assert await settled(waiting) is WinnersWait.SHUTTING_DOWN


async def test_the_draw_deadline_draws_without_the_missing(
    make_round: MakeRound, fake: FakeStore
) -> None:
    """With a draw deadline, the draw is made when it passes, without the agencies missing."""
    round_ = await make_round(2, draw_deadline=0.01)
    await round_.agency_done(1)
    assert await settled(round_.winners(1, timeout=5)) == ("7574",)
    assert round_.barrier.missing == [2]
    assert round_.refuse_bets(2) == (ErrorCode.DRAW_MADE, "the draw is made")


# -- agencies -----------------------------------------------------------------


async def test_bets_are_refused_after_done_and_after_the_barrier(make_round: MakeRound) -> None:
    """An agency that is done may send no more bets; once all are done, nobody may."""
    round_ = await make_round(2)
    assert round_.refuse_bets(1) is None
    await round_.agency_done(1)
    assert round_.refuse_bets(1) == (ErrorCode.OUT_OF_ORDER, "agency 1 is done")
    assert round_.refuse_bets(2) is None
    await round_.agency_done(2)
    assert round_.refuse_bets(2) == (ErrorCode.DRAW_MADE, "the draw is made")


async def test_a_newer_connection_stops_the_older_ones(make_round: MakeRound) -> None:
    """Admitting a connection for an agency stops that agency's older connections, no other."""
    round_ = await make_round(2)
    old, other, new = Speaker(), Speaker(), Speaker()
    epoch, progress = await settled(round_.admit(1, old))
    assert (epoch, progress[:2]) == (0, (0, 0))  # epoch 0: a store only this server uses
    await settled(round_.admit(2, other))
    await settled(round_.admit(1, new))
    assert old.stopped and not other.stopped and not new.stopped
    round_.leave(1, old)
    round_.leave(1, new)
    assert [a["connected"] for a in round_.status()["agency"]] == [False, True]


async def test_admit_waits_for_the_older_connection_batches(
    make_round: MakeRound, fake: FakeStore
) -> None:
    """The handshake's progress is read only after batches already handed over are committed."""
    round_ = await make_round(2)
    fake.commit_gate.clear()
    handed = round_.submit(1, 1, batch(1, 1).records)
    await wait_for_thread_event(fake.commit_entered)
    admitting = asyncio.create_task(round_.admit(1, Speaker()))
    assert await still_pending(admitting)
    fake.commit_gate.set()
    await settled(admitting)
    assert handed.result() is Outcome.STORED


async def test_status_counts_stored_bets_from_memory(
    make_round: MakeRound, fake: FakeStore
) -> None:
    """Status reports each agency's stored bets and sequence without asking the store."""
    round_ = await make_round(2)
    await settled(round_.submit(2, 1, batch(2, 1, bets=3).records))
    fake.outcomes[(2, 1)] = Outcome.DUPLICATE  # resent: acknowledged, not counted again
    await settled(round_.submit(2, 1, batch(2, 1, bets=3).records))
    calls = len(fake.calls)
    status = round_.status()
    assert len(fake.calls) == calls
    assert status["agency"][1] == {
        "id": 2,
        "committed_bets": 3,
        "last_seq": 1,
        "connected": False,
        "done": False,
    }
    assert (round_.stats.bets_stored, round_.stats.batches_stored) == (3, 1)
