"""DrawBarrier: opens once, on the N-th distinct agency; waiters wake only on draw or shutdown."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lottery.barrier import DrawBarrier

pytestmark = pytest.mark.timeout(30)


async def let_loop_run(turns: int = 5) -> None:
    """Give every ready task a few chances to run (not a wait for anything)."""
    for _ in range(turns):
        await asyncio.sleep(0)


@st.composite
def rounds(draw: st.DrawFn) -> tuple[int, list[int], list[int]]:
    """A round size N, agencies already done at start, and an arrival order with duplicates."""
    n = draw(st.integers(min_value=1, max_value=8))
    ids = list(range(1, n + 1))
    already = draw(st.lists(st.sampled_from(ids), unique=True))
    extra = draw(st.lists(st.sampled_from(ids), max_size=3 * n))
    everyone = ids if draw(st.booleans()) else []
    order = draw(st.permutations(extra + everyone))
    return n, already, order


@given(rounds())
def test_arrive_opens_exactly_once_on_the_last_distinct_agency(
    round_: tuple[int, list[int], list[int]],
) -> None:
    """arrive() is True once, when the N-th distinct agency arrives; `missing` tracks the rest."""
    n, already, order = round_
    barrier = DrawBarrier(n, done=already)
    seen = set(already)
    assert barrier.opened == (len(seen) == n)
    opened_by = 0
    for agency in order:
        completes = agency not in seen and len(seen) == n - 1
        assert barrier.arrive(agency) is completes
        seen.add(agency)
        opened_by += completes
        assert barrier.missing == [a for a in range(1, n + 1) if a not in seen]
        assert barrier.done == frozenset(seen)
        assert barrier.opened == (len(seen) == n)
    if len(already) == n:
        assert opened_by == 0  # a rebuilt, complete barrier never opens again
    else:
        assert opened_by == (1 if len(seen) == n else 0)
    assert not barrier.released


def test_missing_lists_every_agency_at_first() -> None:
    """A fresh barrier is closed and misses every agency 1..N."""
    barrier = DrawBarrier(4)
    assert barrier.missing == [1, 2, 3, 4]
    assert barrier.done == frozenset()
    assert not barrier.opened
    assert not barrier.released
    assert not barrier.closed


def test_single_agency_round_opens_on_its_first_arrival() -> None:
    """With one agency, its first arrive() opens the barrier and a repeat does not."""
    barrier = DrawBarrier(1)
    assert barrier.arrive(1)
    assert not barrier.arrive(1)
    assert barrier.missing == []


@pytest.mark.parametrize("agencies", [0, -1, -100])
def test_fewer_than_one_agency_is_refused(agencies: int) -> None:
    """A round needs at least one agency."""
    with pytest.raises(ValueError, match="at least one agency"):
        DrawBarrier(agencies)


async def test_no_winners_before_the_draw() -> None:
    """A winners query waiting on the barrier is not woken by the last arrival, only by the draw."""
    barrier = DrawBarrier(3)
    waiter = asyncio.create_task(barrier.wait())
    await let_loop_run()
    assert not waiter.done()

    assert not barrier.arrive(2)
    assert not barrier.arrive(1)
    assert barrier.arrive(3)
    await let_loop_run()
    assert not waiter.done()
    done, _ = await asyncio.wait({waiter}, timeout=0.05)
    assert not done

    barrier.release()
    assert await waiter is True
    assert barrier.released


async def test_release_wakes_every_waiter_and_later_ones_pass() -> None:
    """release() wakes all current waiters with True, and later waiters do not wait."""
    barrier = DrawBarrier(2)
    waiters = [asyncio.create_task(barrier.wait()) for _ in range(10)]
    await let_loop_run()
    barrier.arrive(1)
    barrier.arrive(2)
    barrier.release()
    assert await asyncio.gather(*waiters) == [True] * 10
    async with asyncio.timeout(0):  # already released: must not even suspend
        assert await barrier.wait() is True


async def test_shutdown_wakes_every_waiter_with_false() -> None:
    """shutdown() wakes every waiter, and they see that no draw was made."""
    barrier = DrawBarrier(3)
    barrier.arrive(1)
    waiters = [asyncio.create_task(barrier.wait()) for _ in range(5)]
    await let_loop_run()
    assert not any(w.done() for w in waiters)

    barrier.shutdown()
    assert await asyncio.gather(*waiters) == [False] * 5
    assert barrier.closed
    assert await barrier.wait() is False


async def test_shutdown_after_the_draw_still_reports_the_draw() -> None:
    """A waiter woken after both draw and shutdown sees that the draw was made."""
    barrier = DrawBarrier(1)
    barrier.arrive(1)
    barrier.release()
    barrier.shutdown()
    assert await barrier.wait() is True


async def test_cancelled_waiter_does_not_disturb_the_others() -> None:
    """A winners query that times out leaves the other waiters waiting for the draw."""
    barrier = DrawBarrier(2)
    patient = asyncio.create_task(barrier.wait())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await barrier.wait()
    assert not patient.done()
    barrier.release()
    assert await patient is True


async def test_rebuilt_drawn_barrier_answers_at_once_and_never_reopens() -> None:
    """A barrier rebuilt as done and released answers True at once and never opens again."""
    barrier = DrawBarrier(3, done=[3, 1, 2])
    barrier.release()
    assert barrier.opened
    assert barrier.released
    assert barrier.missing == []
    async with asyncio.timeout(0):  # must not even suspend
        assert await barrier.wait() is True
    assert [barrier.arrive(a) for a in (1, 2, 3)] == [False, False, False]


async def test_rebuilt_barrier_without_draw_is_open_but_waits() -> None:
    """A barrier rebuilt as all done but not drawn is open, never reopens, and waits."""
    barrier = DrawBarrier(2, done={1, 2})
    assert barrier.opened
    assert not barrier.arrive(1)
    assert not barrier.arrive(2)
    waiter = asyncio.create_task(barrier.wait())
    await let_loop_run()
    assert not waiter.done()
    barrier.release()
    assert await waiter is True


async def test_rebuilt_partial_barrier_opens_on_the_remaining_agency() -> None:
    """A barrier rebuilt with some agencies done opens when the remaining one arrives."""
    barrier = DrawBarrier(3, done=[2, 3])
    assert not barrier.opened
    assert barrier.missing == [1]
    assert not barrier.arrive(3)
    assert barrier.arrive(1)
    assert not barrier.arrive(1)
