"""Several servers, one round, over the in-memory shared store (tests/shared_fake.py).

The same properties over a real PostgreSQL are in tests/test_multi_server_pg.py;
here every order of events is forced, none is left to timing: the barrier and
the draw across servers, fencing (store guarantee 7), winners served by a
server that did not draw, and STATUS of the whole round from any server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from lottery.client import AsyncAgency
from lottery.committer import Committer
from lottery.errors import ErrorCode
from lottery.protocol import Ack, Batch, Done, Error, Winners, WinnersQuery
from lottery.round import Round
from lottery.server import Server
from lottery.store import Outcome, Progress

from .conftest import UNIT
from .fake_store import settled, still_pending
from .helpers import LOOPBACK, WINNING_NUMBER, make_rows, raw_connection, running_server
from .shared_fake import SharedDatabase, SharedFake

pytestmark = pytest.mark.timeout(30)

#: A watcher that waits this long between reads never polls during a test:
#: whatever it notices, a change signal (NOTIFY) woke it.
NO_POLLING = 600.0

MakeRound = Callable[..., Awaitable[tuple[Round, SharedFake]]]


class Speaker:
    def __init__(self) -> None:
        self.stopped = False

    def stop_reading(self) -> None:
        self.stopped = True


@pytest.fixture
def db() -> SharedDatabase:
    return SharedDatabase()


@pytest.fixture
async def make_round(db: SharedDatabase) -> AsyncIterator[MakeRound]:
    """Build one server's `Round` over its own handle on ``db``; all closed at teardown."""
    made: list[tuple[Round, Committer, SharedFake]] = []

    async def make(
        agencies: int = 2, server_id: str = "", poll_interval: float = NO_POLLING
    ) -> tuple[Round, SharedFake]:
        store = db.handle(server_id)
        committer = Committer(store)
        committer.start()
        round_ = await Round.load(store, committer, agencies, poll_interval=poll_interval)
        made.append((round_, committer, store))
        return round_, store

    yield make
    for round_, committer, store in made:
        store.commit_gate.set()
        round_.shutdown()
        await settled(round_.wait_closed())
        await settled(committer.close())


def winning_batch(agency: int, seq: int = 1) -> list[tuple[str, str, str, str, str]]:
    """Three bets of ``agency``, the first on the winning number."""
    return make_rows(3, start=1000 * agency + 10 * seq, winners=[0])


# -- the barrier and the draw across servers ----------------------------------------------


async def test_done_marks_on_two_servers_open_one_barrier_and_make_one_draw(
    make_round: MakeRound, db: SharedDatabase
) -> None:
    """Agency 1 done on A, agency 2 on B: one draw, and both serve its winners."""
    a, _ = await make_round(server_id="A")
    b, _ = await make_round(server_id="B")
    assert await settled(a.submit(1, 1, winning_batch(1))) is Outcome.STORED
    assert await settled(b.submit(2, 1, winning_batch(2))) is Outcome.STORED
    await settled(a.agency_done(1))
    await settled(b.agency_done(2))  # B sees the last DONE: B draws
    assert db.draws_made == 1, db.events
    for round_ in (a, b):
        assert await settled(round_.winners(1, 5.0)) == (str(30_001_010),)
        assert await settled(round_.winners(2, 5.0)) == (str(30_002_010),)
    assert [e for e in db.events if e[1] == "draw"] == [("B", "draw")]


async def test_two_servers_racing_to_draw_make_exactly_one(
    make_round: MakeRound, db: SharedDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last two DONEs reach two servers at once: both try to draw, the store makes one."""
    a, store_a = await make_round(server_id="A")
    b, store_b = await make_round(server_id="B")
    await settled(a.submit(1, 1, winning_batch(1)))
    for store in (store_a, store_b):  # each mark lands, then the other server's, then the reads

        async def mark_then_yield(agency: int, mark: Any = store.mark_done) -> None:
            await mark(agency)
            await asyncio.sleep(0)

        monkeypatch.setattr(store, "mark_done", mark_then_yield)
    await settled(asyncio.gather(a.agency_done(1), b.agency_done(2)))
    # Both servers saw every agency done and asked the store to draw; it made one.
    assert sorted(db.draw_attempts) == ["A", "B"]
    assert db.draws_made == 1
    assert a.drawn and b.drawn
    assert await settled(a.winners(1, 5.0)) == await settled(b.winners(1, 5.0))


async def test_winners_reach_a_server_that_did_not_draw_when_notified(
    make_round: MakeRound, db: SharedDatabase
) -> None:
    """A winners query waiting on B is answered once A draws, woken by the change signal."""
    a, _ = await make_round(server_id="A")
    b, _ = await make_round(server_id="B")
    await settled(a.submit(2, 1, winning_batch(2)))
    await settled(b.agency_done(2))
    waiting = asyncio.create_task(b.winners(2, 60.0))
    answered: list[int] = []
    waiting.add_done_callback(lambda _: answered.append(len(db.events)))
    assert await still_pending(waiting)
    await settled(a.agency_done(1))  # A sees the last DONE and draws
    assert await settled(waiting) == (str(30_002_010),)
    draw_at = db.events.index(("A", "draw"))
    # B answered after A's draw, and before anything else happened in the store:
    # with polling off, only the draw's signal can have woken B's watcher.
    assert answered == [draw_at + 1]


async def test_a_round_whose_drawing_server_died_is_drawn_by_another(
    make_round: MakeRound, db: SharedDatabase
) -> None:
    """Every agency done but no draw recorded (its server died): a live server draws."""
    b, _ = await make_round(server_id="B")
    dead = db.handle("dead")  # it stored the last DONE, then was killed before drawing
    await settled(dead.mark_done(1))
    await settled(dead.mark_done(2))
    assert await settled(b.winners(1, 5.0)) == ()
    assert db.draws_made == 1 and db.events[-1] == ("B", "draw")


async def test_a_server_started_after_the_draw_serves_it(
    make_round: MakeRound, db: SharedDatabase
) -> None:
    """A server (re)started once the round is drawn loads the draw and draws nothing."""
    a, _ = await make_round(server_id="A")
    await settled(a.submit(1, 1, winning_batch(1)))
    await settled(a.agency_done(1))
    await settled(a.agency_done(2))
    c, _ = await make_round(server_id="C")
    assert c.drawn and db.draws_made == 1
    assert await settled(c.winners(1, 1.0)) == (str(30_001_010),)


# -- fencing (store guarantee 7) ---------------------------------------------------------


async def test_a_stalled_servers_late_commit_stores_nothing_after_the_agency_moved(
    make_round: MakeRound, db: SharedDatabase
) -> None:
    """A's held commit of agency 1 is STALE once B admitted it; B's WELCOME and seq 1 are exact."""
    a, a_store = await make_round(server_id="A")
    b, _ = await make_round(server_id="B")
    epoch_a, _ = await settled(a.admit(1, Speaker()))
    a_store.commit_gate.clear()
    late = a.submit(1, 1, make_rows(2), 2, epoch_a)
    await settled(a_store.commit_entered.wait())  # read by A, not committed
    epoch_b, progress = await settled(b.admit(1, Speaker()))
    assert epoch_b > epoch_a
    assert progress == Progress()  # exact: nothing of A's batch
    a_store.commit_gate.set()
    assert await settled(late) is Outcome.STALE
    moved = make_rows(2, start=50)
    assert await settled(b.submit(1, 1, moved, 2, epoch_b)) is Outcome.STORED  # seq 1 is free
    assert [bet[3] for bet in db.bets] == [row[2] for row in moved]
    assert a.status()["agency"][0]["committed_bets"] == 0  # a STALE batch is not counted


async def test_leaving_clears_the_agencys_server_only_for_its_own_admission(
    make_round: MakeRound, db: SharedDatabase
) -> None:
    """A connection that closes after its agency moved to another server leaves that mark."""
    a, _ = await make_round(server_id="A")
    b, _ = await make_round(server_id="B")
    old, new = Speaker(), Speaker()
    await settled(a.admit(1, old))
    await settled(b.admit(1, new))
    a.leave(1, old)
    a.shutdown()
    await settled(a.wait_closed())  # the release has run
    assert db.servers == {1: "B"}
    b.leave(1, new)
    b.shutdown()
    await settled(b.wait_closed())
    assert db.servers == {}


# -- status -----------------------------------------------------------------------------


async def test_status_on_either_server_shows_the_whole_round(
    make_round: MakeRound, db: SharedDatabase
) -> None:
    """STATUS from A or B: every agency's stored bets, done mark and server."""
    a, a_store = await make_round(3, server_id="A", poll_interval=0.05)
    b, b_store = await make_round(3, server_id="B", poll_interval=0.05)
    epoch, _ = await settled(a.admit(1, Speaker()))
    await settled(a.submit(1, 1, make_rows(4), 4, epoch))
    epoch, _ = await settled(b.admit(2, Speaker()))
    await settled(b.submit(2, 1, make_rows(2, start=10), 2, epoch))
    await settled(b.agency_done(2))
    await settled(asyncio.gather(a_store.followed(), b_store.followed()))
    for round_, me in ((a, "A"), (b, "B")):
        status = round_.status()
        assert status["server_id"] == me
        rows = [
            (e["id"], e["committed_bets"], e["last_seq"], e["connected"], e["done"], e["server"])
            for e in status["agency"]
        ]
        assert rows == [
            (1, 4, 1, True, False, "A"),
            (2, 2, 1, True, True, "B"),
            (3, 0, 0, False, False, None),
        ]


async def test_a_store_outage_pauses_the_watcher_which_then_catches_up(
    make_round: MakeRound, db: SharedDatabase
) -> None:
    """While the store is down the watcher backs off; once it is back, the draw reaches B."""
    a, _ = await make_round(server_id="A")
    b, b_store = await make_round(server_id="B", poll_interval=0.05)
    await settled(b.agency_done(2))
    db.unavailable = True
    await settled(b_store.followed(3))  # it failed, backed off and tried again
    db.unavailable = False
    await settled(a.agency_done(1))
    assert await settled(b.winners(1, 5.0)) == ()
    assert db.draws_made == 1


# -- over the wire: two Servers, one round ----------------------------------------------


def shared_server(
    tmp_path: Path, store: SharedFake, agencies: int
) -> AbstractAsyncContextManager[Server]:
    """`running_server` over one server's handle on the shared store."""
    return running_server(tmp_path, store=store, agencies=agencies, timeout_winners=10.0)


async def test_fencing_over_the_wire_the_agency_moves_from_a_stalled_server(
    tmp_path: Path, db: SharedDatabase
) -> None:
    """Agency 3 sends to A, A stalls, 3 moves to B: exact WELCOME, A's late batch refused, once."""
    a_store, b_store = db.handle(), db.handle()
    async with shared_server(tmp_path, a_store, 3) as a, shared_server(tmp_path, b_store, 3) as b:
        assert a_store.server_id == f"{LOOPBACK}:{a.port}"  # named as listened, after binding
        async with raw_connection(a.port, 3) as on_a:
            a_store.commit_gate.clear()
            await on_a.send(Batch(1, make_rows(2), 2))  # type: ignore[arg-type]
            await settled(a_store.commit_entered.wait())
            async with raw_connection(b.port) as on_b:
                welcome = await on_b.hello(3)
                assert (welcome.last_seq, welcome.committed_bets, welcome.input_rows) == (0, 0, 0)
                a_store.commit_gate.set()
                refused = await on_a.receive()
                assert isinstance(refused, Error) and refused.code == ErrorCode.STORAGE
                await on_a.expect_eof()
                rows = make_rows(3, start=300, winners=[1])
                await on_b.send(Batch(1, rows, 3), Done(), WinnersQuery())  # type: ignore[arg-type]
                assert await on_b.receive() == Ack(1)
                assert await on_b.receive() == Ack(0)
                for agency, server in ((1, a), (2, b)):
                    async with raw_connection(server.port, agency) as other:
                        await other.send(Done())
                        assert await other.receive() == Ack(0)
                assert await on_b.receive() == Winners((rows[1][2],))
        assert a.status()["agency"][2]["committed_bets"] == 3
    assert [bet[3] for bet in db.bets] == [row[2] for row in rows]
    assert rows[1][4] == str(WINNING_NUMBER) and db.draws_made == 1


async def test_an_agency_leaves_a_stalled_server_and_finishes_the_round_on_another(
    tmp_path: Path, db: SharedDatabase
) -> None:
    """AsyncAgency over [A, B]: A stalls with its batches, the agency moves to B; stored once."""
    a_store, b_store = db.handle(), db.handle()
    rows = make_rows(120, winners=[3, 77])
    async with shared_server(tmp_path, a_store, 1) as a, shared_server(tmp_path, b_store, 1) as b:
        a_store.commit_gate.clear()  # A reads the batches and never commits them...

        async def release_a_once_the_agency_is_on_b() -> None:
            await b_store.admitted.wait()
            a_store.commit_gate.set()  # ...until the agency was admitted on B

        releasing = asyncio.create_task(release_a_once_the_agency_is_on_b())
        servers = [(LOOPBACK, a.port), (LOOPBACK, b.port)]
        options = {"timeout": 0.5 * UNIT, "reconnect_base_delay": 0.01, "batch_max_amount": 20}
        async with AsyncAgency(1, servers=servers, **options) as agency:  # type: ignore[arg-type]
            async with asyncio.timeout(20 * UNIT):
                result = await agency.run(rows)
        await settled(releasing)
    assert result.winners == [rows[3][2], rows[77][2]]
    assert [bet[3] for bet in db.bets] == [row[2] for row in rows]  # each once, in order
    late = [what for who, what in db.events if who == a_store.server_id and "commit" in what]
    assert late and all("stored" not in what for what in late)  # A's commits: all STALE
    assert db.draws_made == 1


async def test_an_agency_leaves_a_server_cut_off_from_the_store(
    tmp_path: Path, db: SharedDatabase
) -> None:
    """A refuses the handshake with STORAGE (it cannot reach the store): the agency moves to B."""
    a_store, b_store = db.handle(), db.handle()
    rows = make_rows(60, winners=[7])
    async with shared_server(tmp_path, a_store, 1) as a, shared_server(tmp_path, b_store, 1) as b:
        a_store.partitioned = True
        servers = [(LOOPBACK, a.port), (LOOPBACK, b.port)]
        async with AsyncAgency(1, servers=servers, reconnect_base_delay=0.01) as agency:
            async with asyncio.timeout(20 * UNIT):
                result = await agency.run(rows)
        assert b.round.drawn
    assert result.winners == [rows[7][2]]
    assert [bet[3] for bet in db.bets] == [row[2] for row in rows]
    admitted_by = [who for who, what in db.events if what == "admit 1"]
    assert admitted_by == [b_store.server_id]  # A never could
