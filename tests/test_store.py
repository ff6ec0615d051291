"""SQLiteStore: idempotent batches, atomic group commits, durable progress and draw."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lottery.errors import ConfigError, StoreError
from lottery.models import FS, RS
from lottery.protocol import Record
from lottery.store import DB_FILENAME, Outcome, PendingBatch, SQLiteStore, ThreadedStore
from lottery.store.sqlite import _marked_documents

pytestmark = pytest.mark.timeout(30)

WINNING = 7574
AGENCIES = 3


def rec(
    document: str,
    number: str = "1234",
    birthdate: str = "1990-05-17",
    first_name: str = "Santiago Lionel",
    last_name: str = "Lorca",
) -> Record:
    """One bet's five wire fields."""
    return (first_name, last_name, document, birthdate, number)


def batch(agency: int, seq: int, *records: Record) -> PendingBatch:
    """A pending batch of ``records`` (one default bet when none are given)."""
    return PendingBatch(agency, seq, records or (rec(f"{agency}{seq:04d}"),))


def rows(store: SQLiteStore) -> list[tuple[Any, ...]]:
    return list(store.bets())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(data_dir, AGENCIES, WINNING)
    yield s
    s.close()  # closing twice is harmless, so tests may close it themselves


@pytest.fixture
def buenos_aires(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the test in Buenos Aires time (UTC-3), restoring the zone afterwards."""
    monkeypatch.setenv("TZ", "America/Argentina/Buenos_Aires")
    time.tzset()
    assert time.timezone == 3 * 3600, "tzdata for America/Argentina/Buenos_Aires is missing"
    yield
    monkeypatch.undo()
    time.tzset()


# -- idempotent, ordered batches ----------------------------------------------


def test_first_batch_is_stored_and_progress_advances(store: SQLiteStore) -> None:
    """A batch with the next sequence is stored and moves the agency's progress."""
    assert store.progress(1)[:2] == (0, 0)
    outcomes = store.commit([batch(1, 1, rec("1"), rec("2"), rec("3"))])
    assert outcomes == [Outcome.STORED]
    assert store.progress(1)[:2] == (1, 3)
    assert [r[3] for r in rows(store)] == ["1", "2", "3"]


def test_resent_committed_batch_is_duplicate_and_not_stored_twice(store: SQLiteStore) -> None:
    """A resent batch whose sequence is already committed is acknowledged again and not stored
    twice."""
    store.commit([batch(1, 1, rec("1"), rec("2"))])
    store.commit([batch(1, 2, rec("3"))])
    before = rows(store)

    assert store.commit([batch(1, 1, rec("1"), rec("2"))]) == [Outcome.DUPLICATE]
    assert store.commit([batch(1, 2, rec("other"))]) == [Outcome.DUPLICATE]
    assert rows(store) == before
    assert store.progress(1)[:2] == (2, 3)


def test_duplicate_inside_one_group_is_stored_once(store: SQLiteStore) -> None:
    """The same batch twice in one group is stored once and reported duplicate the second time."""
    b = batch(2, 1, rec("10"), rec("11"))
    assert store.commit([b, b]) == [Outcome.STORED, Outcome.DUPLICATE]
    assert len(rows(store)) == 2
    assert store.progress(2)[:2] == (1, 2)


def test_sequence_that_skips_ahead_is_a_gap_and_stores_nothing(store: SQLiteStore) -> None:
    """A batch whose sequence skips ahead is refused as a gap and none of its bets are stored."""
    assert store.commit([batch(1, 2, rec("1"), rec("2"))]) == [Outcome.GAP]
    assert rows(store) == []
    assert store.progress(1)[:2] == (0, 0)

    store.commit([batch(1, 1, rec("1"))])
    assert store.commit([batch(1, 3, rec("3"))]) == [Outcome.GAP]
    assert [r[3] for r in rows(store)] == ["1"]
    assert store.progress(1)[:2] == (1, 1)


def test_gap_in_a_group_does_not_block_the_other_batches(store: SQLiteStore) -> None:
    """In one group a gap batch is refused while its neighbours are stored."""
    outcomes = store.commit([batch(1, 1, rec("a")), batch(1, 5, rec("gap")), batch(1, 2, rec("b"))])
    assert outcomes == [Outcome.STORED, Outcome.GAP, Outcome.STORED]
    assert [r[3] for r in rows(store)] == ["a", "b"]
    assert store.progress(1)[:2] == (2, 2)


def test_one_commit_holds_batches_of_several_agencies(store: SQLiteStore) -> None:
    """One commit stores consecutive batches of several agencies and tracks each one's progress."""
    outcomes = store.commit(
        [
            batch(1, 1, rec("11"), rec("12")),
            batch(2, 1, rec("21")),
            batch(1, 2, rec("13")),
            batch(3, 1, rec("31"), rec("32"), rec("33")),
            batch(2, 2, rec("22")),
        ]
    )
    assert outcomes == [Outcome.STORED] * 5
    assert store.progress(1)[:2] == (2, 3)
    assert store.progress(2)[:2] == (2, 2)
    assert store.progress(3)[:2] == (1, 3)
    assert [(r[0], r[3]) for r in rows(store)] == [
        (1, "11"),
        (1, "12"),
        (2, "21"),
        (1, "13"),
        (3, "31"),
        (3, "32"),
        (3, "33"),
        (2, "22"),
    ]


def test_empty_group_commits_nothing(store: SQLiteStore) -> None:
    """Committing no batches returns no outcomes and changes nothing."""
    assert store.commit([]) == []
    assert rows(store) == []


# -- durability across restarts -----------------------------------------------


def test_progress_survives_close_and_reopen(data_dir: Path) -> None:
    """Each agency's last sequence and bet count are read back after a reopen."""
    s = SQLiteStore(data_dir, AGENCIES, WINNING)
    s.commit([batch(1, 1, rec("1"), rec("2")), batch(2, 1, rec("3"))])
    s.commit([batch(1, 2, rec("4"))])
    s.close()

    s = SQLiteStore(data_dir, AGENCIES, WINNING)
    try:
        assert s.progress(1)[:2] == (2, 3)
        assert s.progress(2)[:2] == (1, 1)
        assert s.progress(3)[:2] == (0, 0)
        assert s.commit([batch(1, 2, rec("4"))]) == [Outcome.DUPLICATE]
        assert s.commit([batch(1, 3, rec("5"))]) == [Outcome.STORED]
        assert len(rows(s)) == 5
    finally:
        s.close()


def test_done_agencies_and_draw_survive_reopen(data_dir: Path) -> None:
    """A restarted server neither forgets done agencies nor draws twice."""
    s = SQLiteStore(data_dir, AGENCIES, WINNING)
    assert s.done_agencies() == set()
    assert not s.drawn()
    s.commit([batch(1, 1, rec("1", number=str(WINNING)))])
    s.mark_done(1)
    s.mark_done(3)
    s.mark_done(3)
    assert s.draw() is True
    assert s.winners() == {1: ["1"]}
    s.close()

    s = SQLiteStore(data_dir, AGENCIES, WINNING)
    try:
        assert s.done_agencies() == {1, 3}
        assert s.drawn()
        assert s.progress(1)[:2] == (1, 1)
        assert s.winners() == {1: ["1"]}
    finally:
        s.close()


def test_mark_done_keeps_progress_and_commits_keep_done(store: SQLiteStore) -> None:
    """Marking an agency done and committing its batches do not overwrite each other."""
    store.mark_done(2)
    assert store.commit([batch(2, 1, rec("1"))]) == [Outcome.STORED]
    assert store.done_agencies() == {2}
    store.commit([batch(1, 1, rec("2"))])
    store.mark_done(1)
    assert store.progress(1)[:2] == (1, 1)
    assert store.done_agencies() == {1, 2}


def test_reopen_with_other_agency_count_raises_config_error(data_dir: Path) -> None:
    """A data directory remembers its round's agency count and refuses another one."""
    SQLiteStore(data_dir, 3).close()
    with pytest.raises(ConfigError, match="of 3 agencies, not of 5 agencies"):
        SQLiteStore(data_dir, 5)
    SQLiteStore(data_dir, 3).close()  # the same count still opens
    SQLiteStore(data_dir).close()  # and so does an unspecified one


def test_refused_open_closes_its_connection(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that refuses to open (wrong agency count) does not leak its SQLite connection."""
    SQLiteStore(data_dir, 3).close()
    opened = track_connections(monkeypatch)
    with pytest.raises(ConfigError):
        SQLiteStore(data_dir, 4)
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")


def track_connections(monkeypatch: pytest.MonkeyPatch) -> list[sqlite3.Connection]:
    """Record every SQLite connection opened from now on (to check none leaks)."""
    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def tracking_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        opened.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", tracking_connect)
    return opened


# -- atomic group commits -----------------------------------------------------


def test_failure_in_a_later_batch_stores_none_of_the_group(
    store: SQLiteStore, data_dir: Path
) -> None:
    """A commit that fails in a later batch raises StoreError and stores nothing of its group."""
    store.commit([batch(1, 1, rec("0"))])
    before = rows(store)
    with sqlite3.connect(data_dir / DB_FILENAME) as other:
        other.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON batches WHEN NEW.agency = 3 "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    other.close()
    group = [
        batch(1, 2, rec("1"), rec("2")),
        batch(2, 1, rec("3")),
        batch(3, 1, rec("4")),
    ]
    with pytest.raises(StoreError):
        store.commit(group)
    assert rows(store) == before
    assert store.progress(1)[:2] == (1, 1)
    assert store.progress(2)[:2] == (0, 0)
    assert store.progress(3)[:2] == (0, 0)

    # The store is still usable: the good batches can be resent and are stored.
    assert store.commit(group[:2]) == [Outcome.STORED, Outcome.STORED]
    assert store.progress(1)[:2] == (2, 3)


@pytest.mark.parametrize("action", ["ABORT", "FAIL", "ROLLBACK"])
def test_failing_insert_trigger_stores_none_of_the_group(
    store: SQLiteStore, data_dir: Path, action: str
) -> None:
    """An insert that SQLite refuses midway through a group rolls back the whole group."""
    with sqlite3.connect(data_dir / DB_FILENAME) as other:
        other.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON batches WHEN NEW.records LIKE '%boom%' "
            f"BEGIN SELECT RAISE({action}, 'injected failure'); END"
        )
    other.close()
    group = [
        batch(1, 1, rec("1"), rec("2")),
        batch(2, 1, rec("3"), rec("boom"), rec("4")),
    ]
    with pytest.raises(StoreError, match="injected failure"):
        store.commit(group)
    assert rows(store) == []
    assert store.progress(1)[:2] == (0, 0)
    assert store.progress(2)[:2] == (0, 0)
    assert store.commit([batch(1, 1, rec("1"))]) == [Outcome.STORED]


def test_failing_progress_update_stores_none_of_the_group(
    store: SQLiteStore, data_dir: Path
) -> None:
    """A failure while saving progress, after every bet was inserted, still stores nothing."""
    store.commit([batch(1, 1, rec("0"))])
    with sqlite3.connect(data_dir / DB_FILENAME) as other:
        other.execute(
            "CREATE TRIGGER boom BEFORE UPDATE OF last_seq ON agencies "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    other.close()
    with pytest.raises(StoreError):
        store.commit([batch(2, 1, rec("2")), batch(1, 2, rec("1"))])
    assert [r[3] for r in rows(store)] == ["0"]
    assert store.progress(1)[:2] == (1, 1)
    assert store.progress(2)[:2] == (0, 0)
    store.close()

    reopened = SQLiteStore(data_dir, AGENCIES, WINNING)
    try:
        assert reopened.progress(1)[:2] == (1, 1)
        assert reopened.progress(2)[:2] == (0, 0)
    finally:
        reopened.close()


# -- what comes back out ------------------------------------------------------


@pytest.mark.usefixtures("buenos_aires")
def test_birthdates_round_trip_as_the_same_iso_text(data_dir: Path) -> None:
    """Birthdates come back as the very ISO text stored, even in a UTC-3 time zone."""
    dates = ["1970-01-01", "1999-12-31", "2000-02-29", "2023-10-15", "1900-03-01"]
    s = SQLiteStore(data_dir, AGENCIES, WINNING)
    s.commit([batch(1, 1, *(rec(str(i), birthdate=d) for i, d in enumerate(dates)))])
    s.close()
    s = SQLiteStore(data_dir, AGENCIES, WINNING)
    try:
        got = [r[4] for r in rows(s)]
    finally:
        s.close()
    assert got == dates
    assert all(type(d) is str for d in got)


def test_number_comes_back_as_int(store: SQLiteStore) -> None:
    """The number column is read back as an int, leading zeros dropped."""
    store.commit([batch(1, 1, rec("1", number="7574"), rec("2", number="0042"), rec("3", "0"))])
    numbers = [r[5] for r in rows(store)]
    assert numbers == [7574, 42, 0]
    assert all(type(n) is int for n in numbers)


def test_bets_yields_full_rows_in_insertion_order(store: SQLiteStore) -> None:
    """bets() yields every stored bet, with its agency, in the order the bets were stored."""
    store.commit([batch(2, 1, rec("b1", first_name="Zoe", last_name="Ávila"))])
    store.commit([batch(1, 1, rec("a1")), batch(3, 1, rec("c1"), rec("c2"))])
    store.commit([batch(2, 2, rec("b2"))])
    assert rows(store) == [
        (2, "Zoe", "Ávila", "b1", "1990-05-17", 1234),
        (1, "Santiago Lionel", "Lorca", "a1", "1990-05-17", 1234),
        (3, "Santiago Lionel", "Lorca", "c1", "1990-05-17", 1234),
        (3, "Santiago Lionel", "Lorca", "c2", "1990-05-17", 1234),
        (2, "Santiago Lionel", "Lorca", "b2", "1990-05-17", 1234),
    ]


def test_winners_groups_winning_documents_by_agency(store: SQLiteStore) -> None:
    """winners() maps each agency to its winning documents, in insertion order, and nothing else."""
    win, lose = str(WINNING), "1"
    store.commit(
        [
            batch(2, 1, rec("21", win), rec("22", lose), rec("23", win)),
            batch(1, 1, rec("11", lose)),
            batch(3, 1, rec("31", win)),
        ]
    )
    store.commit([batch(2, 2, rec("24", win)), batch(1, 2, rec("12", win))])
    expected = {1: ["12"], 2: ["21", "23", "24"], 3: ["31"]}
    assert store.winners() == expected
    assert list(store.winners()) == [1, 2, 3]  # agencies in order
    assert not store.drawn()
    assert store.draw() is True
    assert store.winners() == expected
    assert store.drawn()


def test_the_draw_reads_the_winners_not_every_bet(store: SQLiteStore) -> None:
    """Winners are picked out as batches are stored, so the draw never reads the batches."""
    store.commit([batch(1, 1, *(rec(str(i), str(i)) for i in range(50)), rec("w", "7574"))])
    queries: list[str] = []
    store._db.set_trace_callback(queries.append)
    try:
        assert store.draw() is True
        assert store.winners() == {1: ["w"]}
    finally:
        store._db.set_trace_callback(None)
    assert queries
    assert not any("batches" in q for q in queries), queries


@pytest.mark.parametrize("number", ["7574", "07574"[1:], "0042", "042", "42"])
def test_zero_padded_numbers_win_like_the_number(data_dir: Path, number: str) -> None:
    """A number written with leading zeros wins when its value is the winning number."""
    winning = int(number)
    store = SQLiteStore(data_dir, AGENCIES, winning)
    try:
        store.commit([batch(1, 1, rec("a", number), rec("b", str(winning + 1)))])
        assert store.draw() is True
        assert store.winners() == {1: ["a"]}
    finally:
        store.close()


def test_reopen_with_another_winning_number_raises_config_error(data_dir: Path) -> None:
    """A data directory remembers its winning number, since winners were picked with it."""
    SQLiteStore(data_dir, AGENCIES, 7574).close()
    with pytest.raises(ConfigError, match="won by number 7574, not won by number 42"):
        SQLiteStore(data_dir, AGENCIES, 42)


# -- pragmas and settings -----------------------------------------------------


def test_wal_journal_and_full_synchronous_are_set(store: SQLiteStore) -> None:
    """The store runs in WAL mode with synchronous=FULL by default."""
    assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


@pytest.mark.parametrize(("mode", "level"), [("NORMAL", 1), ("off", 0), ("Full", 2)])
def test_synchronous_setting_is_applied(data_dir: Path, mode: str, level: int) -> None:
    """The synchronous setting is applied to the connection, in any letter case."""
    s = SQLiteStore(data_dir, synchronous=mode)
    try:
        assert s._db.execute("PRAGMA synchronous").fetchone() == (level,)
    finally:
        s.close()


@pytest.mark.parametrize("mode", ["EXTRA", "", "FULL; DROP TABLE bets", "2"])
def test_invalid_synchronous_raises_config_error(data_dir: Path, mode: str) -> None:
    """An invalid synchronous setting raises ConfigError before anything is created."""
    with pytest.raises(ConfigError, match="synchronous"):
        SQLiteStore(data_dir, synchronous=mode)
    assert not data_dir.exists()


def test_corrupt_database_raises_store_error_and_closes(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data directory whose database file is not SQLite raises StoreError and leaks nothing."""
    data_dir.mkdir()
    (data_dir / DB_FILENAME).write_bytes(b"this is not a database, just text" * 100)
    opened = track_connections(monkeypatch)
    with pytest.raises(StoreError, match="cannot open"):
        SQLiteStore(data_dir, AGENCIES)
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")


def test_the_draw_is_recorded_once_and_then_nothing_is_stored(data_dir: Path) -> None:
    """Only the first draw() says it made the draw; after it every batch is LATE, even reopened."""
    s = SQLiteStore(data_dir, AGENCIES, WINNING)
    try:
        assert s.draw() is True
        assert s.draw() is False
        assert s.commit([batch(1, 1, rec("1"))]) == [Outcome.LATE]
        assert s.progress(1)[:2] == (0, 0)
    finally:
        s.close()
    s = SQLiteStore(data_dir, AGENCIES, WINNING)
    try:
        assert s.draw() is False
        assert s.commit([batch(2, 1, rec("2"))]) == [Outcome.LATE]
        assert list(s.bets()) == []
    finally:
        s.close()


def test_reading_a_store_needs_no_restating_how_it_was_made(data_dir: Path) -> None:
    """A store opened with no agency count or number takes what it holds (the export does so)."""
    SQLiteStore(data_dir, AGENCIES, 1234).close()
    s = SQLiteStore(data_dir)
    try:
        assert s.winning_number == 1234
    finally:
        s.close()
    with pytest.raises(ConfigError, match="won by number 1234, not won by number 7574"):
        SQLiteStore(data_dir, AGENCIES, 7574)


# -- done marks through the store thread --------------------------------------


class _CountingStore(SQLiteStore):
    """A SQLiteStore that records each mark_done_many call, and can fail them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mark_calls: list[list[int]] = []
        self.fail = False

    def mark_done_many(self, agencies: Any) -> None:
        self.mark_calls.append(list(agencies))
        if self.fail:
            raise StoreError("disk full")
        super().mark_done_many(agencies)


async def _marks_behind_a_busy_thread(
    data_dir: Path, fail: bool
) -> tuple[_CountingStore, list[BaseException | None]]:
    """Three DONE marks asked while the store thread is busy; what each came to."""
    made: list[_CountingStore] = []

    def open_store() -> _CountingStore:
        made.append(_CountingStore(data_dir, AGENCIES, WINNING))
        return made[0]

    threaded = await ThreadedStore.open(open_store)
    made[0].fail = fail
    gate = threading.Event()
    busy = asyncio.ensure_future(threaded.call(lambda _: gate.wait(10)))
    marks = [asyncio.ensure_future(threaded.mark_done(agency)) for agency in (1, 2, 3)]
    await asyncio.sleep(0)  # every mark is queued behind the busy job
    gate.set()
    await busy
    results = await asyncio.gather(*marks, return_exceptions=True)
    await threaded.aclose()
    return made[0], [r if isinstance(r, BaseException) else None for r in results]


async def test_done_marks_asked_together_are_one_transaction(data_dir: Path) -> None:
    """Marks that wait for the store thread are made by one mark_done_many call."""
    store, results = await _marks_behind_a_busy_thread(data_dir, fail=False)
    assert results == [None, None, None]
    assert store.mark_calls == [[1, 2, 3]]
    reopened = SQLiteStore(data_dir)
    assert reopened.done_agencies() == {1, 2, 3}
    reopened.close()


async def test_a_failed_group_of_done_marks_fails_every_mark(data_dir: Path) -> None:
    """If the one transaction fails, every DONE in it is refused (and may be asked again)."""
    store, results = await _marks_behind_a_busy_thread(data_dir, fail=True)
    assert [str(r) for r in results] == ["disk full"] * 3
    assert store.mark_calls == [[1, 2, 3]]
    reopened = SQLiteStore(data_dir)
    assert reopened.done_agencies() == set()
    reopened.close()


@given(
    number=st.integers(0, 9999),
    numbers=st.lists(st.integers(0, 9999) | st.just(-1), min_size=1, max_size=20),
    padded=st.lists(st.booleans(), min_size=20, max_size=20),
)
def test_winners_are_picked_from_the_record_text_as_from_the_rows(
    number: int, numbers: list[int], padded: list[bool]
) -> None:
    """The commit's search of the text finds exactly the rows whose number wins, in order."""
    rows = []
    for i, n in enumerate(numbers):
        n = number if n < 0 else n  # -1: a winner
        rows.append(
            ("Ana", "Soto", str(1000 + i), "1990-05-17", str(n).zfill(4) if padded[i] else str(n))
        )
    text = "".join(FS.join(r) + RS for r in rows)
    digits = str(number)
    marks = tuple(f"{FS}{'0' * pad}{digits}{RS}" for pad in range(5 - len(digits)))
    assert _marked_documents(text, marks) == [r[2] for r in rows if int(r[4]) == number]


async def test_progress_reads_are_batched_but_never_pass_a_commit(data_dir: Path) -> None:
    """Reads waiting together share a job; one asked after a commit was queued sees it."""
    threaded = await ThreadedStore.open(lambda: SQLiteStore(data_dir, AGENCIES, WINNING))
    gate = threading.Event()
    busy = asyncio.ensure_future(threaded.call(lambda _: gate.wait(10)))
    before = [asyncio.ensure_future(threaded.progress(agency)) for agency in (1, 1, 2)]
    commit = asyncio.ensure_future(threaded.commit([batch(1, 1)]))
    after = asyncio.ensure_future(threaded.progress(1))
    await asyncio.sleep(0)
    gate.set()
    await busy
    assert [p.last_seq for p in await asyncio.gather(*before)] == [0, 0, 0]
    assert await commit == [Outcome.STORED]
    assert (await after).last_seq == 1
    await threaded.aclose()
