"""Committer with several groups in flight (``lanes``, PostgreSQL's ``commit_lanes``):
never two groups holding one agency, each agency's batches judged in order."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from lottery.committer import Committer
from lottery.store import Outcome, PendingBatch

from .fake_store import rec

pytestmark = pytest.mark.timeout(30)


class LaneStore:
    """An async store that judges like the real ones (STORED, DUPLICATE, GAP per
    agency) and records which groups were in flight at once.

    With ``gated``, each commit waits for `release` to let it finish.
    """

    commit_lanes = 2

    def __init__(self, *, gated: bool = False, seed: int = 0) -> None:
        self.last: dict[int, int] = {}
        self.stored: list[tuple[int, int]] = []
        self.in_flight: list[set[int]] = []  # the agencies of each commit running now
        self.overlaps: list[tuple[set[int], set[int]]] = []
        self.most_at_once = 0
        self.gated = gated
        self.started = asyncio.Queue[set[int]]()
        self._gates: list[asyncio.Event] = []
        self._random = random.Random(seed)

    def release(self) -> None:
        for gate in self._gates:
            gate.set()

    async def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        agencies = {b.agency for b in batches}
        self.overlaps.extend((agencies, other) for other in self.in_flight if agencies & other)
        self.in_flight.append(agencies)
        self.most_at_once = max(self.most_at_once, len(self.in_flight))
        await self.started.put(agencies)
        try:
            if self.gated:
                gate = asyncio.Event()
                self._gates.append(gate)
                await gate.wait()
            else:  # commits of random length: a later group may finish first
                for _ in range(self._random.randrange(4)):
                    await asyncio.sleep(0)
            outcomes = []
            for b in batches:  # judged when the commit ends, as under a row lock
                last = self.last.get(b.agency, 0)
                if b.seq <= last:
                    outcomes.append(Outcome.DUPLICATE)
                elif b.seq != last + 1:
                    outcomes.append(Outcome.GAP)
                else:
                    self.last[b.agency] = b.seq
                    self.stored.append((b.agency, b.seq))
                    outcomes.append(Outcome.STORED)
            return outcomes
        finally:
            self.in_flight.remove(agencies)


def _batch(agency: int, seq: int, bets: int = 10) -> PendingBatch:
    return PendingBatch(agency, seq, [rec(seq * 100 + i) for i in range(bets)])


async def test_two_groups_in_flight_hold_disjoint_agencies() -> None:
    """With two lanes, a second group starts while the first commits, without its agencies."""
    store = LaneStore(gated=True)
    committer = Committer(store, max_group_bets=1000)  # type: ignore[arg-type]
    assert committer.lanes == 2  # taken from the store's commit_lanes
    committer.start()
    futures = [committer.submit(_batch(a, 1)) for a in (1, 2, 3, 4)]
    first = await asyncio.wait_for(store.started.get(), 5)
    second = await asyncio.wait_for(store.started.get(), 5)
    assert first.isdisjoint(second)
    assert first | second == {1, 2, 3, 4}  # the first left a share to the second lane
    # A later batch of an agency in flight waits for its group: no third commit.
    later = committer.submit(_batch(min(first), 2))
    await asyncio.sleep(0)
    assert store.started.empty()
    store.release()
    assert [await f for f in futures] == [Outcome.STORED] * 4
    started = await asyncio.wait_for(store.started.get(), 5)
    store.release()
    assert started == {min(first)}
    assert await later is Outcome.STORED
    await committer.close()
    assert store.overlaps == []


async def test_a_free_lane_never_takes_an_agency_already_in_flight() -> None:
    """A lane is free and agency 1 has a later batch waiting, but agency 1 is in
    flight: the free lane takes only the other agency's batch behind it."""
    store = LaneStore(gated=True)
    committer = Committer(store, max_group_bets=1000)  # type: ignore[arg-type]
    committer.start()
    first = committer.submit(_batch(1, 1))
    assert await asyncio.wait_for(store.started.get(), 5) == {1}
    later = committer.submit(_batch(1, 2))
    other = committer.submit(_batch(2, 1))
    assert await asyncio.wait_for(store.started.get(), 5) == {2}
    store.release()
    assert [await first, await other] == [Outcome.STORED, Outcome.STORED]
    assert await asyncio.wait_for(store.started.get(), 5) == {1}
    store.release()
    assert await later is Outcome.STORED
    await committer.close()
    assert store.overlaps == []


async def test_each_agency_is_judged_in_order_across_lanes() -> None:
    """Many agencies sending in order through two lanes of uneven commits: every
    batch STORED once, in order, no false GAP, and two groups did run at once."""
    store = LaneStore(seed=11)
    committer = Committer(store, max_group_bets=60)  # type: ignore[arg-type]
    committer.start()
    shuffle = random.Random(5)

    async def agency(number: int) -> list[Outcome]:
        outcomes: list[Outcome] = []
        window: list[asyncio.Future[object]] = []
        for seq in range(1, 41):
            await committer.wait_for_room()
            window.append(committer.submit(_batch(number, seq, shuffle.randrange(1, 30))))
            if len(window) == 4:  # the agency's window: its acks, then more
                outcomes.extend(await asyncio.gather(*window))  # type: ignore[arg-type]
                window.clear()
        outcomes.extend(await asyncio.gather(*window))  # type: ignore[arg-type]
        return outcomes

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(agency(a)) for a in range(1, 8)]
    await committer.close()
    for task in tasks:
        assert task.result() == [Outcome.STORED] * 40
    for number in range(1, 8):
        assert [s for a, s in store.stored if a == number] == list(range(1, 41))
    assert store.overlaps == []
    assert store.most_at_once == 2


async def test_settle_waits_for_a_group_in_any_lane() -> None:
    """`settle` returns only once the agency's batch in the second lane committed."""
    store = LaneStore(gated=True)
    committer = Committer(store, max_group_bets=1000)  # type: ignore[arg-type]
    committer.start()
    futures = [committer.submit(_batch(a, 1)) for a in (1, 2)]
    lanes = {frozenset(await asyncio.wait_for(store.started.get(), 5)) for _ in range(2)}
    assert lanes == {frozenset({1}), frozenset({2})}
    settle = asyncio.create_task(committer.settle(2))
    await asyncio.sleep(0)
    assert not settle.done()
    store.release()
    await asyncio.wait_for(settle, 5)
    assert all(f.done() for f in futures)
    await committer.close()


async def test_close_commits_what_waits_behind_a_busy_agency() -> None:
    """Batches waiting for their agency's group are committed before close returns."""
    store = LaneStore(gated=True)
    committer = Committer(store, max_group_bets=1000)  # type: ignore[arg-type]
    committer.start()
    first = committer.submit(_batch(1, 1))
    await asyncio.wait_for(store.started.get(), 5)
    second = committer.submit(_batch(1, 2))
    closing = asyncio.create_task(committer.close())
    store.release()
    await asyncio.wait_for(store.started.get(), 5)
    store.release()
    await asyncio.wait_for(closing, 5)
    assert (await first, await second) == (Outcome.STORED, Outcome.STORED)
    assert committer.submit(_batch(1, 3)).result().__class__.__name__ == "StoreError"


async def test_one_lane_by_default() -> None:
    """A store without ``commit_lanes`` (SQLite's) gets one group at a time."""

    class Plain:
        async def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
            return [Outcome.STORED] * len(batches)

    committer = Committer(Plain())  # type: ignore[arg-type]
    assert committer.lanes == 1
