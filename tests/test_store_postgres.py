"""PostgresStore on a real PostgreSQL: the store contract, typed bets, fencing, faults."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import pg_cluster as cluster
from lottery.config import load_server_config
from lottery.draw import derive_number
from lottery.errors import ConfigError, StoreError
from lottery.models import EMPTY_DIGEST, FS, RS, agency_digest
from lottery.protocol import Record
from lottery.store import Outcome, PendingBatch, PostgresStore
from lottery.store import postgres as postgres_module

pytestmark = pytest.mark.timeout(60)

WINNING = 7574
AGENCIES = 3


def rec(document: str, number: str = "1234", birthdate: str = "1990-05-17") -> Record:
    return ("Santiago Lionel", "Lorca", document, birthdate, number)


def batch(agency: int, seq: int, *records: Record, epoch: int = 0) -> PendingBatch:
    return PendingBatch(agency, seq, records or (rec(f"{agency}{seq:04d}"),), epoch=epoch)


def digest_of(*records: Record) -> bytes:
    return agency_digest("".join(FS.join(r) + RS for r in records).encode()).digest()


async def all_bets(store: PostgresStore) -> list[tuple[Any, ...]]:
    return [row async for row in store.bets()]


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = await PostgresStore.open(pg_dsn, agencies=AGENCIES, winning_number=WINNING)
    yield s
    await s.aclose()  # closing twice is harmless


# -- the contract: ordered, idempotent batches --------------------------------------------------


async def test_first_batch_is_stored_and_progress_advances(store: PostgresStore) -> None:
    """A batch with the next sequence is stored and moves the agency's progress and digest."""
    assert await store.progress(1) == (0, 0, 0, EMPTY_DIGEST)
    records = (rec("1"), rec("2"), rec("3"))
    assert await store.commit([PendingBatch(1, 1, records, input_rows=4)]) == [Outcome.STORED]
    assert await store.progress(1) == (1, 3, 4, digest_of(*records))
    assert [r[3] for r in await all_bets(store)] == ["1", "2", "3"]


async def test_duplicates_gaps_and_neighbours_in_one_group(store: PostgresStore) -> None:
    """In one group: a resent batch is DUPLICATE, one that skips ahead is GAP, the rest stored."""
    outcomes = await store.commit(
        [batch(1, 1), batch(1, 1), batch(1, 3), batch(2, 1), batch(1, 2), batch(2, 2)]
    )
    assert outcomes == [
        Outcome.STORED, Outcome.DUPLICATE, Outcome.GAP, Outcome.STORED, Outcome.STORED,
        Outcome.STORED,
    ]  # fmt: skip
    assert await store.commit([batch(1, 2)]) == [Outcome.DUPLICATE]
    assert (await store.progress(1))[:2] == (2, 2)
    assert (await store.progress(2))[:2] == (2, 2)
    assert sorted(r[3] for r in await all_bets(store)) == ["10001", "10002", "20001", "20002"]


async def test_empty_group_commits_nothing(store: PostgresStore) -> None:
    """Committing no batches returns no outcomes and changes nothing."""
    assert await store.commit([]) == []
    assert await store.all_progress() == {}


async def test_progress_done_marks_and_draw_survive_reopen(pg_dsn: str) -> None:
    """A reopened store (another server, a restart) reads the same progress, done marks and draw."""
    first = await PostgresStore.open(pg_dsn, agencies=AGENCIES, winning_number=WINNING)
    try:
        await first.commit([batch(1, 1, rec("a", "7574")), batch(2, 1)])
        await first.commit([batch(1, 2)])
        await first.mark_done(1)
        await first.mark_done(1)
    finally:
        await first.aclose()
    second = await PostgresStore.open(pg_dsn, agencies=AGENCIES, winning_number=WINNING)
    try:
        assert (await second.progress(1))[:2] == (2, 2)
        assert (await second.progress(1)).digest == digest_of(rec("a", "7574"), rec("10002"))
        assert await second.done_agencies() == {1}
        assert await second.draw() is True
        assert await second.winners() == {1: ["a"]}
        # This server never stored agency 1's batches: its running digest is rebuilt.
        assert await second.commit([batch(2, 2)]) == [Outcome.LATE]
    finally:
        await second.aclose()


async def test_a_second_server_continues_an_agency_with_the_right_digest(pg_dsn: str) -> None:
    """After another server stored batches, the next commit here extends the digest exactly."""
    a = await PostgresStore.open(pg_dsn, agencies=AGENCIES)
    b = await PostgresStore.open(pg_dsn, agencies=AGENCIES)
    try:
        await a.commit([batch(1, 1)])
        await b.commit([batch(1, 2)])
        await a.commit([batch(1, 3)])
        assert (await b.progress(1)).digest == digest_of(rec("10001"), rec("10002"), rec("10003"))
    finally:
        await a.aclose()
        await b.aclose()


# -- the draw -------------------------------------------------------------------------------


async def test_the_draw_is_made_once_and_then_every_batch_is_late(store: PostgresStore) -> None:
    """Only the first draw() returns True; after it a commit stores nothing (LATE)."""
    assert await store.draw() is True
    assert await store.draw() is False
    assert await store.commit([batch(1, 1)]) == [Outcome.LATE]
    assert await all_bets(store) == []


@pytest.mark.parametrize("number", ["7574", "0042", "042", "42"])
async def test_winners_by_value_in_store_order(pg_dsn: str, number: str) -> None:
    """Winners are the bets whose number has the winning value, zero padding or not, in order."""
    s = await PostgresStore.open(pg_dsn, agencies=AGENCIES, winning_number=int(number))
    try:
        await s.commit([batch(2, 1, rec("b1", number), rec("x", "1"))])
        await s.commit([batch(1, 1, rec("a1", number)), batch(2, 2, rec("b2", number))])
        assert await s.draw() is True
        assert await s.winners() == {1: ["a1"], 2: ["b1", "b2"]}
        state = await s.draw_state()
        assert (state.drawn, state.number) == (True, int(number))
    finally:
        await s.aclose()


async def test_an_agency_moving_between_servers_keeps_its_order(pg_dsn: str) -> None:
    """Winners and the export follow each agency's sequence, not the ids servers hand out.

    Each database session takes ids from a cached block of its own: agency 1's
    second batch, stored by the server whose block started lower, gets lower
    ids than its first.
    """
    s1 = await PostgresStore.open(pg_dsn, agencies=AGENCIES, winning_number=WINNING)
    s2 = await PostgresStore.open(pg_dsn, agencies=AGENCIES, winning_number=WINNING)
    try:
        won = str(WINNING)
        assert await s1.commit([batch(2, 1, rec("c1", won))]) == [Outcome.STORED]  # s1's block
        epoch, _ = await s2.admit(1)
        assert await s2.commit([batch(1, 1, rec("a1", won), epoch=epoch)]) == [Outcome.STORED]
        epoch, _ = await s1.admit(1)  # back to s1, whose ids are lower
        assert await s1.commit([batch(1, 2, rec("a2", won), epoch=epoch)]) == [Outcome.STORED]
        assert await s1.draw() is True
        assert await s2.winners() == {1: ["a1", "a2"], 2: ["c1"]}
        assert [row[3] for row in await all_bets(s2)] == ["a1", "a2", "c1"]
    finally:
        await s1.aclose()
        await s2.aclose()


async def test_two_stores_racing_the_draw_make_it_once(pg_dsn: str) -> None:
    """Two servers calling draw() at the same moment: exactly one True, the same winners."""
    stores = [await PostgresStore.open(pg_dsn, agencies=AGENCIES) for _ in range(4)]
    try:
        await stores[0].commit([batch(1, 1, rec("w", "7574"))])
        made = await asyncio.gather(*(s.draw() for s in stores))
        assert sorted(made) == [False, False, False, True]
        for s in stores:
            assert await s.winners() == {1: ["w"]}
            assert await s.commit([batch(1, 2)]) == [Outcome.LATE]
    finally:
        for s in stores:
            await s.aclose()


async def test_the_draw_waits_for_a_commit_in_flight_and_later_commits_are_late(
    store: PostgresStore, pg_dsn: str
) -> None:
    """Guarantee 3 across servers: a draw waits for a commit holding the round row, whose
    bets then take part; a server that has not seen the draw finds its commit LATE."""
    other = await PostgresStore.open(pg_dsn, agencies=AGENCIES)
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with conn.transaction():  # what a commit holds while it writes
            await conn.fetchval("SELECT drawn FROM round FOR SHARE")
            drawing = asyncio.create_task(store.draw())
            for _ in range(500):  # until the draw's backend waits for the row lock
                waiting = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'SELECT drawn, seed%'"
                )
                if waiting:
                    break
                await asyncio.sleep(0.01)
            assert waiting and not drawing.done()
            await conn.execute(
                "INSERT INTO bets (agency, seq, first_name, last_name, document, birthdate, "
                "number) VALUES (1, 1, 'A', 'B', 'in-flight', '1990-01-01', $1)",
                WINNING,
            )
        assert await drawing is True
        assert await store.winners() == {1: ["in-flight"]}
        assert await other.commit([batch(2, 1, rec("late", "7574"))]) == [Outcome.LATE]
    finally:
        await conn.close()
        await other.aclose()


async def test_a_commit_waiting_behind_the_draw_is_late(store: PostgresStore, pg_dsn: str) -> None:
    """Guarantee 3 the other way: a commit that takes its locks (one statement: the
    agencies' rows and the round's) while a draw holds the round row waits for it, then
    reads the round as the draw left it: LATE, nothing stored."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with conn.transaction():  # what a draw holds while it picks the winners
            await conn.fetchval("SELECT drawn FROM round FOR UPDATE")
            await conn.execute("UPDATE round SET drawn = true, number = $1", WINNING)
            committing = asyncio.create_task(store.commit([batch(1, 1, rec("waited"))]))
            for _ in range(500):  # until the commit's backend waits for the row lock
                waiting = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"  # the store's is the only other
                )
                if waiting:
                    break
                await asyncio.sleep(0.01)
            assert waiting and not committing.done()
        assert await committing == [Outcome.LATE]
        assert await conn.fetchval("SELECT count(*) FROM bets") == 0
        assert (await store.progress(1)).last_seq == 0
    finally:
        await conn.close()


async def test_random_draw_number_and_receipts(pg_dsn: str) -> None:
    """A random draw derives its number from seed, reveals and beacon, and each receipt equals
    the agency's stored count and digest."""
    s = await PostgresStore.open(pg_dsn, agencies=AGENCIES, draw_mode="random")
    try:
        assert (await s.draw_state()).seed is not None
        await s.commit([batch(1, 1, rec("a"), rec("b", "0042")), batch(2, 1)])
        await s.commit([batch(1, 2)])
        assert await s.commit_nonce(1, b"c" * 32) == b"c" * 32
        assert await s.commit_nonce(1, b"d" * 32) == b"c" * 32  # the first one stays
        assert await s.record_reveal(1, b"n" * 32) is True
        await s.commit_nonce(2, b"e" * 32)
        await s.refuse_reveal(2)
        assert await s.record_reveal(2, b"m" * 32) is False
        await s.set_beacon(b"\x01\x02")
        assert await s.draw() is True
        state = await s.draw_state()
        assert state.seed is not None
        assert state.number == derive_number(state.seed, {1: b"n" * 32}, b"\x01\x02")
        assert state.refused == {2}
        for agency in (1, 2):
            progress = await s.progress(agency)
            assert state.receipts[agency] == (progress.committed_bets, progress.digest)
        assert await s.record_reveal(1, b"n" * 32) is False
        with pytest.raises(StoreError, match="too late"):
            await s.set_beacon(b"\x03")
    finally:
        await s.aclose()


# -- fencing (guarantee 7) and the round's view ---------------------------------------------


async def test_a_stale_epochs_batches_store_nothing_and_take_no_sequence(
    store: PostgresStore,
) -> None:
    """After a second admission, a batch read under the first epoch is STALE: not stored, and
    its sequence number stays free for the new connection."""
    first, progress = await store.admit(1)
    assert progress == (0, 0, 0, EMPTY_DIGEST)
    second, _ = await store.admit(1)
    assert second == first + 1
    assert await store.commit([batch(1, 1, rec("old"), epoch=first)]) == [Outcome.STALE]
    assert await store.progress(1) == (0, 0, 0, EMPTY_DIGEST)
    assert await store.commit([batch(1, 1, rec("new"), epoch=second)]) == [Outcome.STORED]
    assert [r[3] for r in await all_bets(store)] == ["new"]


async def test_view_shows_done_marks_progress_and_servers(pg_dsn: str) -> None:
    """view() shows the whole round; release() clears a server's mark only for its own epoch."""
    a = await PostgresStore.open(pg_dsn, agencies=AGENCIES, server_id="a:1")
    b = await PostgresStore.open(pg_dsn, agencies=AGENCIES, server_id="b:2")
    try:
        old, _ = await a.admit(1)
        new, _ = await b.admit(1)
        await b.admit(2)
        await b.commit([batch(1, 1, epoch=new)])
        await a.mark_done(3)
        await a.release(1, old)  # superseded: b's mark stays
        view = await a.view()
        assert view.servers == {1: "b:2", 2: "b:2"}
        assert view.done == {3} and not view.drawn
        assert list(view.progress) == [1]
        await b.release(1, new)
        assert (await a.view()).servers == {2: "b:2"}
    finally:
        await a.aclose()
        await b.aclose()


async def test_wait_changed_wakes_on_another_servers_change(pg_dsn: str) -> None:
    """A done mark made by another server wakes wait_changed; one's own changes do not."""
    a = await PostgresStore.open(pg_dsn, agencies=AGENCIES)
    b = await PostgresStore.open(pg_dsn, agencies=AGENCIES)
    try:
        assert await a.wait_changed(0.05) is False  # opens the listener; nothing yet
        await a.mark_done(2)
        assert await a.wait_changed(0.2) is False
        waiting = asyncio.create_task(a.wait_changed(10))
        await b.mark_done(1)
        assert await waiting is True
        await b.draw()
        assert await a.wait_changed(10) is True
        assert await a.drawn() is True
    finally:
        await a.aclose()
        await b.aclose()


# -- a real database: typed columns, COPY, settings ------------------------------------------


async def test_bets_are_typed_rows_an_operator_can_query(store: PostgresStore, pg_dsn: str) -> None:
    """One row per bet: birthdate a date, number a smallint, found by document with SQL."""
    await store.commit([batch(2, 1, rec("30111222", "0042", "1979-02-28"), rec("5"))])
    conn = await asyncpg.connect(pg_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT agency, seq, birthdate, number, pg_typeof(birthdate)::text AS bt, "
            "pg_typeof(number)::text AS nt FROM bets WHERE document = '30111222'"
        )
        version = await conn.fetchval("SELECT version FROM schema_version")
        sync = await conn.fetchval("SHOW synchronous_commit")
    finally:
        await conn.close()
    assert tuple(row) == (2, 1, datetime.date(1979, 2, 28), 42, "date", "smallint")
    assert version == postgres_module.SCHEMA_VERSION
    assert sync == "on"
    assert (await all_bets(store))[0] == (2, "Santiago Lionel", "Lorca", "30111222", "1979-02-28",
                                          42)  # fmt: skip


async def test_names_with_backslashes_and_quotes_survive_copy(store: PostgresStore) -> None:
    """COPY's escape character and other odd text in names come back exactly."""
    odd = ("Ba\\ck\\Nslash", 'O\'Neil "q" ,;\\.', "7", "2000-02-29", "7")
    await store.commit([PendingBatch(1, 1, [odd])])
    assert await all_bets(store) == [(1, *odd[:4], 7)]
    assert (await store.progress(1)).digest == digest_of(odd)


async def test_batches_are_loaded_with_copy_not_inserts(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit loads its bets with COPY (and no INSERT into bets)."""
    copied: list[str] = []
    statements: list[str] = []
    real_copy = asyncpg.connection.Connection.copy_to_table
    real_execute = asyncpg.connection.Connection.execute

    async def copy_to_table(self: Any, table: str, **kwargs: Any) -> str:
        copied.append(table)
        return await real_copy(self, table, **kwargs)

    async def execute(self: Any, query: str, *args: Any, **kwargs: Any) -> str:
        statements.append(query)
        return await real_execute(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.connection.Connection, "copy_to_table", copy_to_table)
    monkeypatch.setattr(asyncpg.connection.Connection, "execute", execute)
    await store.commit([batch(1, 1, *(rec(str(i)) for i in range(100)))])
    assert copied == ["bets"]
    assert not any("INSERT INTO bets" in q for q in statements)
    assert len(await all_bets(store)) == 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"agencies": 5}, "holds a round of 3 agencies, not of 5 agencies; use another database"),
        ({"winning_number": 42}, "won by 7574, not won by 42"),
        ({"draw_mode": "random"}, "with a fixed draw, not with a random draw"),
    ],
)
async def test_a_store_made_for_another_round_is_refused(
    store: PostgresStore, pg_dsn: str, kwargs: dict[str, Any], message: str
) -> None:
    """Reopened with another agency count, winning number or draw mode: one-line ConfigError."""
    with pytest.raises(ConfigError, match=message) as caught:
        await PostgresStore.open(pg_dsn, **kwargs)
    assert "\n" not in str(caught.value)


async def test_readers_take_the_stored_settings_and_need_a_round(
    store: PostgresStore, pg_dsn: str, pg_database: str
) -> None:
    """A reader (export, verify) opens with no settings; a database with no round is refused."""
    reader = await PostgresStore.open(pg_dsn, create=False)
    try:
        assert (reader.agencies, reader.winning_number, reader.draw_mode) == (3, WINNING, "fixed")
        assert reader.round_id == store.round_id
    finally:
        await reader.aclose()
    empty = pg_dsn.replace("search_path=", "search_path=nothing_here_")
    with pytest.raises(ConfigError, match="holds no lottery round"):
        await PostgresStore.open(empty, create=False)


async def test_an_unknown_schema_version_is_refused(store: PostgresStore, pg_dsn: str) -> None:
    """A database written by a newer lottery (another schema version) is refused at open."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("UPDATE schema_version SET version = 99")
    finally:
        await conn.close()
    with pytest.raises(ConfigError, match="schema version 99, this lottery uses version 1"):
        await PostgresStore.open(pg_dsn, agencies=AGENCIES)


async def test_unreachable_postgresql_is_a_plain_store_error() -> None:
    """Nothing listening at the DSN: StoreError naming it, at once."""
    with pytest.raises(StoreError, match="cannot reach PostgreSQL at postgresql://u:\\*\\*\\*@"):
        await PostgresStore.open("postgresql://u:secret@127.0.0.1:9/none")


# -- PostgreSQL restarted ------------------------------------------------------------------


@pytest.mark.slow
async def test_a_commit_while_postgresql_is_down_fails_and_the_store_recovers(
    pg_cluster: tuple[Path, str],
) -> None:
    """PostgreSQL stopped: a commit raises StoreError and stores nothing; restarted (even by a
    crash), the same store reconnects and the batch is stored once."""
    folder, dsn = pg_cluster
    s = await PostgresStore.open(dsn, agencies=AGENCIES)
    try:
        assert await s.commit([batch(1, 1)]) == [Outcome.STORED]
        await asyncio.to_thread(cluster.stop, folder, mode="immediate")
        with pytest.raises(StoreError, match="commit of 1 batches failed"):
            await s.commit([batch(1, 2)])
        with pytest.raises(StoreError):
            await s.progress(1)
        await asyncio.to_thread(cluster.start, folder)
        assert await s.commit([batch(1, 2)]) == [Outcome.STORED]
        assert await s.wait_changed(0.05) is False  # the listener is open
        await asyncio.to_thread(cluster.restart, folder, immediate=True)
        # Notifications may have been lost with the listener: the waiter is woken to look.
        assert await s.wait_changed(10) is True
        try:  # the pooled connection died with the server: this one may fail
            outcome = await s.commit([batch(1, 3)])
        except StoreError:
            outcome = await s.commit([batch(1, 3)])
        assert outcome == [Outcome.STORED]
        assert await s.commit([batch(1, 3)]) == [Outcome.DUPLICATE]
        assert (await s.progress(1))[:2] == (3, 3)
        other = await PostgresStore.open(dsn)
        try:
            assert await s.wait_changed(0.05) is False  # a new listener
            waiting = asyncio.create_task(s.wait_changed(10))
            await other.mark_done(1)
            assert await waiting is True
        finally:
            await other.aclose()
    finally:
        await s.aclose()


# -- choosing the store ------------------------------------------------------------------------


def test_store_setting_comes_from_flag_environment_or_config_ini(tmp_path: Path) -> None:
    """--store, else LOTTERY_STORE, else config.ini's STORE; none: SQLite in --data-dir."""
    ini = tmp_path / "config.ini"
    ini.write_text("[DEFAULT]\nSTORE = postgresql://f@h:1/file\n", encoding="utf-8")
    env = {"LOTTERY_STORE": "postgresql://e@h:1/env"}
    flag = {"store": "postgresql://c@h:1/flag"}
    assert load_server_config(flag, env, str(ini)).store == "postgresql://c@h:1/flag"
    assert load_server_config({}, env, str(ini)).store == "postgresql://e@h:1/env"
    assert load_server_config({}, {}, str(ini)).store == "postgresql://f@h:1/file"
    assert load_server_config({}, {}, None).store == ""


def test_a_store_that_is_not_postgresql_is_refused_in_one_line() -> None:
    """LOTTERY_STORE=sqlite:///x is a ConfigError naming the setting and the value."""
    with pytest.raises(ConfigError) as error:
        load_server_config({}, {"LOTTERY_STORE": "sqlite:///x"}, None)
    assert "LOTTERY_STORE" in str(error.value) and "sqlite:///x" in str(error.value)
    assert "\n" not in str(error.value)
