"""Several servers, one round, over a real PostgreSQL: two `Server`s in one process.

Each server has its own `PostgresStore` (its own pool and LISTEN connection)
on one database, as two hosts would. The orders of events are forced by a
fault hook on a store's commit, never left to timing; the properties are
those tests/test_multi_server.py checks over the in-memory fake.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from lottery import round as round_module
from lottery.client import AsyncAgency
from lottery.config import ServerConfig
from lottery.errors import ErrorCode
from lottery.participant import DrawParticipant
from lottery.protocol import Ack, Batch, Done, Error, Winners, WinnersQuery
from lottery.server import Server
from lottery.store import PendingBatch, PostgresStore

from .conftest import UNIT
from .helpers import LOOPBACK, REPLY_TIMEOUT, WINNING_NUMBER, make_rows, raw_connection

pytestmark = pytest.mark.timeout(60 * UNIT)

Row = tuple[str, str, str, str, str]


class HeldCommits:
    """A fault hook on one store: its commits wait at ``gate`` before their transaction."""

    def __init__(self, store: PostgresStore) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.ended = asyncio.Event()  # a held commit returned
        self.outcomes: list[str] = []
        commit = store.commit

        async def held(batches: Sequence[PendingBatch]) -> Any:
            self.entered.set()
            async with asyncio.timeout(30 * UNIT):
                await self.gate.wait()
            outcomes = await commit(batches)
            self.outcomes += [o.value for o in outcomes]
            self.ended.set()
            return outcomes

        store.commit = held  # type: ignore[method-assign]


def count_views(store: PostgresStore) -> Callable[[int], Awaitable[None]]:
    """Wrap ``store.view``; the returned coroutine waits for ``n`` more reads of the round."""
    seen = {"reads": 0}
    read = asyncio.Event()
    view = store.view

    async def counted() -> Any:
        result = await view()
        seen["reads"] += 1
        read.set()
        return result

    store.view = counted  # type: ignore[method-assign]

    async def more(n: int) -> None:
        target = seen["reads"] + n
        while seen["reads"] < target:
            read.clear()
            await read.wait()

    return more


class Cluster:
    """Servers over one PostgreSQL round; each opened with its own store."""

    def __init__(self, dsn: str, agencies: int, stack: AsyncExitStack, draw: str) -> None:
        self.dsn, self.agencies, self._stack, self.draw = dsn, agencies, stack, draw

    async def store(self) -> PostgresStore:
        store = await PostgresStore.open(
            self.dsn, agencies=self.agencies, winning_number=WINNING_NUMBER, draw_mode=self.draw
        )
        self._stack.push_async_callback(store.aclose)  # closing twice is harmless
        return store

    async def server(self, store: PostgresStore | None = None) -> Server:
        config = ServerConfig(
            host=LOOPBACK, port=0, agencies=self.agencies, timeout_winners=20.0 * UNIT,
            draw=self.draw, reveal_deadline=30.0 * UNIT,
        )  # fmt: skip
        server = Server(config, store=store or await self.store())
        await self._stack.enter_async_context(server)
        return server


@asynccontextmanager
async def cluster(dsn: str, agencies: int, draw: str = "fixed") -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        yield Cluster(dsn, agencies, stack, draw)


async def done(port: int, agency: int) -> None:
    async with raw_connection(port, agency) as conn:
        await conn.send(Done())
        assert await conn.receive() == Ack(0)


async def test_fencing_a_stalled_servers_late_commit_stores_nothing(pg_dsn: str) -> None:
    """Agency 3 sends to A, A's commit is held, 3 moves to B: exact WELCOME, A stores nothing."""
    async with cluster(pg_dsn, 3) as c:
        a_store = await c.store()
        held = HeldCommits(a_store)
        a, b = await c.server(a_store), await c.server()
        rows = make_rows(3, start=300, winners=[1])
        async with raw_connection(a.port, 3) as on_a:
            await on_a.send(Batch(1, make_rows(2), 2))  # type: ignore[arg-type]
            async with asyncio.timeout(REPLY_TIMEOUT):
                await held.entered.wait()  # A read it; its transaction has not begun
            async with raw_connection(b.port) as on_b:
                welcome = await on_b.hello(3)
                assert (welcome.last_seq, welcome.committed_bets, welcome.input_rows) == (0, 0, 0)
                held.gate.set()
                refused = await on_a.receive()
                assert isinstance(refused, Error) and refused.code == ErrorCode.STORAGE
                await on_a.expect_eof()
                assert held.outcomes == ["stale"]
                await on_b.send(Batch(1, rows, 3), Done(), WinnersQuery())  # type: ignore[arg-type]
                assert await on_b.receive() == Ack(1)  # seq 1 is free: A took none
                assert await on_b.receive() == Ack(0)
                await done(a.port, 1)
                await done(b.port, 2)
                assert await on_b.receive() == Winners((rows[1][2],))
        reader = await c.store()
        stored = [bet async for bet in reader.bets()]
    assert stored == [(3, *row[:4], int(row[4])) for row in rows]


async def test_two_servers_racing_to_draw_make_one_and_serve_the_same_winners(
    pg_dsn: str,
) -> None:
    """The last two DONEs reach A and B at once: one draw, identical winners from both."""
    async with cluster(pg_dsn, 2) as c:
        a, b = await c.server(), await c.server()
        rows = {1: make_rows(5, winners=[2]), 2: make_rows(5, start=100, winners=[0, 4])}
        for agency, server in ((1, a), (2, b)):
            async with raw_connection(server.port, agency) as conn:
                await conn.send(Batch(1, rows[agency], 5))  # type: ignore[arg-type]
                assert await conn.receive() == Ack(1)
        await asyncio.gather(done(a.port, 1), done(b.port, 2))
        answers = {}
        for agency in (1, 2):
            for server in (a, b):
                async with raw_connection(server.port, agency) as conn:
                    await conn.send(WinnersQuery())
                    answers[agency, server.port] = await conn.receive()
        drew = [s.round.stats.draw_seconds is not None for s in (a, b)]
        ports = a.port, b.port
    assert drew.count(True) == 1  # exactly one server made it (its store's draw returned True)
    assert [answers[1, p] for p in ports] == [Winners((rows[1][2][2],))] * 2
    assert [answers[2, p] for p in ports] == [Winners((rows[2][0][2], rows[2][4][2]))] * 2


async def test_a_server_that_did_not_draw_answers_winners_when_notified(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's waiting winners query is answered after A's draw; with polling off, NOTIFY woke B.

    B also sees the last DONE (its watcher, woken by A's done mark) and asks
    for the draw too; a hook holds B's ask until A's draw has returned, so A
    is the one that makes it, and B's ask finds it made.
    """
    monkeypatch.setattr(round_module, "POLL_INTERVAL", 600.0)
    loop = asyncio.get_running_loop()
    events: list[tuple[str, float]] = []
    async with cluster(pg_dsn, 2) as c:
        a_store, b_store = await c.store(), await c.store()
        a_drew = asyncio.Event()
        a_draw, b_draw = a_store.draw, b_store.draw

        async def draw_on_a() -> bool:
            made = await a_draw()
            events.append(("A drew" if made else "A found it drawn", loop.time()))
            a_drew.set()
            return made

        async def draw_on_b() -> bool:
            async with asyncio.timeout(20 * UNIT):
                await a_drew.wait()
            made = await b_draw()
            events.append(("B drew" if made else "B found it drawn", loop.time()))
            return made

        a_store.draw, b_store.draw = draw_on_a, draw_on_b  # type: ignore[method-assign]
        a, b = await c.server(a_store), await c.server(b_store)
        rows = make_rows(4, start=200, winners=[3])
        async with raw_connection(b.port, 2) as on_b:
            await on_b.send(Batch(1, rows, 4), Done(), WinnersQuery())  # type: ignore[arg-type]
            assert await on_b.receive() == Ack(1)
            assert await on_b.receive() == Ack(0)
            waiting = asyncio.create_task(on_b.receive(timeout=30 * UNIT))
            waiting.add_done_callback(lambda _: events.append(("B answered", loop.time())))
            async with raw_connection(a.port, 1) as on_a:
                await on_a.send(Done())
                assert await on_a.receive() == Ack(0)
            assert await waiting == Winners((rows[3][2],))
        assert a.round.stats.draw_seconds is not None and b.round.stats.draw_seconds is None
    names = [name for name, _ in events]
    assert names[0] == "A drew" and names[-1] == "B answered"
    assert "B drew" not in names
    latency = events[-1][1] - events[0][1]
    # Reported, not asserted (a loaded machine is slow): the target is 100 ms.
    print(f"winners from the server that did not draw: {latency * 1000:.1f} ms after the draw")


async def test_a_round_whose_drawing_server_died_is_drawn_by_a_live_one(pg_dsn: str) -> None:
    """Every DONE stored, no draw (that server died): B's watcher draws, once."""
    async with cluster(pg_dsn, 2) as c:
        b = await c.server()
        dead = await c.store()  # stored the last two DONEs, then was killed
        await dead.mark_done(1)
        await dead.mark_done(2)
        async with raw_connection(b.port, 1) as conn:
            await conn.send(WinnersQuery())
            assert await conn.receive() == Winners(())
        assert b.round.stats.draw_seconds is not None
        assert await dead.drawn()


async def test_status_on_either_server_shows_every_agency_and_its_server(pg_dsn: str) -> None:
    """STATUS from A or B: all agencies' stored bets, done marks, and the server each is on."""
    async with cluster(pg_dsn, 3) as c:
        a_store, b_store = await c.store(), await c.store()
        a_reads, b_reads = count_views(a_store), count_views(b_store)
        a, b = await c.server(a_store), await c.server(b_store)
        async with raw_connection(a.port, 1) as one, raw_connection(b.port, 2) as two:
            await one.send(Batch(1, make_rows(4), 4))  # type: ignore[arg-type]
            assert await one.receive() == Ack(1)
            await two.send(Batch(1, make_rows(2, start=10), 2), Done())  # type: ignore[arg-type]
            assert await two.receive() == Ack(1)
            assert await two.receive() == Ack(0)
            async with asyncio.timeout(10 * UNIT):  # a change wakes it; else the 1 s poll
                await asyncio.gather(a_reads(2), b_reads(2))
            statuses = [(s, s.status()) for s in (a, b)]
            ids = {a: f"{LOOPBACK}:{a.port}", b: f"{LOOPBACK}:{b.port}"}
    for server, status in statuses:
        assert status["server_id"] == ids[server]
        rows = [
            (e["id"], e["committed_bets"], e["connected"], e["done"], e["server"])
            for e in status["agency"]
        ]
        assert rows == [
            (1, 4, True, False, ids[a]),
            (2, 2, True, True, ids[b]),
            (3, 0, False, False, None),
        ]


async def test_an_agency_moves_from_a_stalled_server_and_the_round_completes_exactly(
    pg_dsn: str,
) -> None:
    """AsyncAgency over [A, B]: A holds its commits past the agency's timeout; stored once."""
    async with cluster(pg_dsn, 1) as c:
        a_store = await c.store()
        held = HeldCommits(a_store)
        b_store = await c.store()
        admit = b_store.admit

        async def admit_then_release_a(agency: int) -> Any:
            """B admits the agency; only then may A's held commit go on, and end, first."""
            admitted = await admit(agency)
            held.gate.set()
            async with asyncio.timeout(REPLY_TIMEOUT):
                await held.ended.wait()
            return admitted

        b_store.admit = admit_then_release_a  # type: ignore[method-assign]
        a, b = await c.server(a_store), await c.server(b_store)
        rows = make_rows(150, winners=[5, 140])

        servers = [(LOOPBACK, a.port), (LOOPBACK, b.port)]
        options: dict[str, Any] = {"timeout": 1.0 * UNIT, "batch_max_amount": 20}
        async with AsyncAgency(1, servers=servers, **options) as agency:
            async with asyncio.timeout(30 * UNIT):
                result = await agency.run(rows)
        reader = await c.store()
        stored = [bet async for bet in reader.bets()]
    assert result.winners == [rows[5][2], rows[140][2]]
    assert stored == [(1, *row[:4], int(row[4])) for row in rows]
    assert held.outcomes and set(held.outcomes) == {"stale"}


async def test_a_random_draw_across_servers_counts_a_nonce_committed_on_another(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Agency 1 commits on A, A goes away, it reveals on B: B waits for it; one draw, all count."""
    async with cluster(pg_dsn, 2, draw="random") as c:
        a, b = await c.server(), await c.server()
        servers = {1: [(LOOPBACK, a.port), (LOOPBACK, b.port)], 2: [(LOOPBACK, b.port)]}
        rows = {
            agency: [
                ("Ana", f"Ag{agency}", str(agency * 100_000 + i), "1990-05-17", str(i))
                for i in range(400)
            ]
            for agency in (1, 2)
        }
        agencies = {
            agency: AsyncAgency(
                agency,
                servers=servers[agency],
                draw=DrawParticipant(agency, tmp_path / f"agency-{agency}.json"),
                batch_max_amount=50,
                reconnect_base_delay=0.01,
            )
            for agency in (1, 2)
        }
        async with agencies[1] as one, agencies[2] as two:
            await one.send_bets(rows[1])
            await one.notify()  # committed and done on A
            a.close()
            await a.wait_closed()  # agency 1 must now reveal on B
            await two.send_bets(rows[2])
            await two.notify()  # the last DONE: betting closes on B
            async with asyncio.timeout(30 * UNIT):
                winners = await asyncio.gather(one.winners(), two.winners())
            receipts = [one.receipt, two.receipt]
        status = b.status()
    assert status["drawn"] and status["not_revealed"] == []
    assert sorted(status["reveals"]) == ["1", "2"]
    number = status["number"]
    for agency, got in zip((1, 2), winners, strict=True):
        assert got == [r[2] for r in rows[agency] if int(r[4]) == number]
    assert all(r is not None and r.ok for r in receipts)
