"""`SQLiteStore`: the embedded default store (stdlib sqlite3, WAL, one file).

It keeps each batch as one row holding its bets in record form
(`lottery.models.Records`: fields joined by 0x1F, bets ended by 0x1E), the
form the server has already validated. One row per batch instead of one per
bet makes a commit several times cheaper; `bets()` splits the records again
for the export. The winning bets are picked out as each batch is stored (a
substring test, in C), so the draw reads a short `winners` table instead of
every bet.

Each agency's progress row also holds its input position and its agency
digest (`lottery.models.agency_digest`). The store keeps one running SHA-256
per agency in memory, rebuilt when the store opens by hashing that agency's
stored batches in sequence order (and checked against the stored digest),
then fed each batch it stores. A data directory made before these columns
existed gets them on open (``ALTER TABLE``), its input position taken to be
its bet count: the agency's digest check then says whether that holds.

A random draw (docs/DRAW.md) cannot pick winners as bets arrive: the number
is unknown until the draw. Its draw reads every batch once, in (agency,
sequence) order, and hands each to a `DrawScan` (lottery/store/drawscan.py),
which finds the winners and recomputes each agency's receipt (the agency
digest above, over the record text as stored) on two threads of its own; on
an undamaged store the receipts equal the running digests. The seed, the
commitments and reveals (``draw_commitments``), the number and the receipts
(``receipts``) live beside the bets, so a restart finds them all.

An `SQLiteStore` must be used from one thread only (SQLite connections belong
to the thread that opened them): the server runs it through `ThreadedStore`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from .. import clock
from ..draw import MODE_FIXED, MODE_RANDOM, SEED_SIZE, derive_number
from ..errors import ConfigError, StoreError
from ..models import DEFAULT_WINNING_NUMBER, FS, RS, Records, RunningDigest, agency_digest
from .base import DrawState, Outcome, PendingBatch, Progress, refused_by_sequence
from .drawscan import DrawScan
from .lock import DataDirLock

__all__ = ["DB_FILENAME", "SYNC_MODES", "SQLiteStore", "new_round_id"]

DB_FILENAME = "lottery.db"


def new_round_id() -> str:
    """A new round's id: when it was created, and enough randomness to tell two apart."""
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


SYNC_MODES = ("FULL", "NORMAL", "OFF")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    agency INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    bets INTEGER NOT NULL,
    records TEXT NOT NULL,  -- the bets in record form (lottery.models.Records)
    PRIMARY KEY (agency, seq)
);
CREATE TABLE IF NOT EXISTS winners (
    agency INTEGER NOT NULL,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agencies (
    agency INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL DEFAULT 0,
    committed_bets INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    input_rows INTEGER NOT NULL DEFAULT 0,
    digest BLOB
);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS draw_commitments (
    agency INTEGER PRIMARY KEY,
    commitment BLOB NOT NULL,  -- the agency's first commitment: never replaced
    nonce BLOB,  -- its reveal, checked against the commitment; NULL: none (yet)
    refused INTEGER NOT NULL DEFAULT 0  -- it revealed a wrong nonce: never another
);
CREATE TABLE IF NOT EXISTS receipts (
    agency INTEGER PRIMARY KEY,
    bets INTEGER NOT NULL,
    digest BLOB NOT NULL
);
"""


# Columns added to `agencies` after the first release, with how to fill them in
# an older data directory (see the module docstring).
_ADDED_COLUMNS = {
    "input_rows": "ALTER TABLE agencies ADD COLUMN input_rows INTEGER NOT NULL DEFAULT 0;"
    "UPDATE agencies SET input_rows = committed_bets",
    "digest": "ALTER TABLE agencies ADD COLUMN digest BLOB",
}

# Bound parameters per statement: 999 is the lowest limit any SQLite has had.
_MAX_PARAMETERS = 999


#: hashlib lets go of the GIL for an update of this many bytes or more (and,
#: once it has, for every later update of that object). On the store's
#: thread that is a hand-over per batch: the thread must then win the GIL
#: back from a busy event loop, up to a switch interval (5 ms) each time, and
#: a commit of forty batches waited 50-120 ms for it with 10,000 agencies
#: connected. Hashing a few kilobytes takes microseconds: keep the GIL.
_HASH_GIL_BYTES = 2048


def _hash_keeping_gil(running: RunningDigest, data: bytes) -> None:
    """``running.update(data)`` in pieces too small for hashlib to release the GIL."""
    if len(data) < _HASH_GIL_BYTES:
        running.update(data)
        return
    step = _HASH_GIL_BYTES - 1
    for start in range(0, len(data), step):
        running.update(data[start : start + step])


def _insert(
    db: sqlite3.Connection,
    sql: str,
    rows: Sequence[tuple[object, ...]],
    placeholders: str | None = None,
) -> None:
    """Insert ``rows`` with as few multi-row statements as the parameter limit allows.

    ``sql`` holds ``{}`` where the ``VALUES`` list goes; ``placeholders`` is
    one row's (``(?, ?)`` by default, one per value).
    """
    if not rows:
        return
    width = len(rows[0])
    placeholders = placeholders or "(" + ", ".join("?" * width) + ")"
    per_statement = _MAX_PARAMETERS // width
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        values = ", ".join([placeholders] * len(chunk))
        db.execute(sql.format(values), [value for row in chunk for value in row])


def _marked_documents(text: str, marks: Sequence[str]) -> list[str]:
    """The documents of the records in ``text`` whose number is one of ``marks``, in order.

    Only the records found are split into fields: a batch is not turned into
    two hundred tuples to find the two that won.
    """
    found: list[tuple[int, str]] = []
    for mark in marks:  # FS + number + RS: the record's last field
        at = text.find(mark)
        while at >= 0:
            start = text.rfind(RS, 0, at) + 1
            found.append((start, text[start:at].split(FS)[2]))
            at = text.find(mark, at + len(mark))
    return [document for _, document in sorted(found)]


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, failure: str) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back whole if the body raises.

    The body may roll back itself (nothing to write after all); an sqlite3
    error becomes a `StoreError` that starts with ``failure``.
    """
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            if db.in_transaction:
                db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise StoreError(f"{failure}: {exc}") from exc


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {what}: {exc}") from exc


class SQLiteStore:
    """`Store` on one SQLite file in WAL mode. Use from a single thread.

    Every guarantee of `Store` holds; how: a commit is one ``BEGIN IMMEDIATE``
    transaction, the draw one ``INSERT OR IGNORE`` of the ``drawn`` setting,
    and since only one thread uses the file, a commit and the draw never
    overlap (a commit after the draw sees ``_drawn`` and stores nothing).

    Args:
        data_dir: directory for ``lottery.db`` (created if missing).
        agencies: the round's agency count; a data directory remembers it and
            refuses to be reopened with another one.
        winning_number: the number that wins. Winners are picked out as bets
            are stored, so a data directory remembers its number too. None
            (for reading a store, e.g. the export): whatever the store holds,
            or `DEFAULT_WINNING_NUMBER` for a new one.
        synchronous: SQLite's ``synchronous`` pragma: FULL (default; an
            acknowledged batch survives power loss), NORMAL or OFF.
        exclusive: hold the data directory's lock (`DataDirLock`) while open,
            as a server does; readers leave it False.
        today: the round's date for a new store (default: `lottery.clock.today`);
            a store keeps the date it was created on.
        draw_mode: ``fixed`` or ``random``, recorded with the round; None
            takes what is recorded (``fixed`` for a new store or one from
            before draw modes).
    """

    #: Bytes a page, for a new store (an existing file keeps its own): a batch
    #: is an ~8 KiB blob, which 4 KiB pages split over three. With 16 KiB the
    #: server alone took 1.72-1.84M bets/s against 1.59-1.68M in the same
    #: minutes (32 and 64 KiB: no better).
    PAGE_SIZE = 16384

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        agencies: int | None = None,
        winning_number: int | None = None,
        synchronous: str = "FULL",
        *,
        exclusive: bool = False,
        today: str | None = None,
        draw_mode: str | None = None,
    ) -> None:
        if synchronous.upper() not in SYNC_MODES:
            raise ConfigError(f"synchronous must be one of {', '.join(SYNC_MODES)}")
        self.path = Path(data_dir) / DB_FILENAME
        self._lock = DataDirLock(data_dir) if exclusive else None
        if self._lock is not None:
            self._lock.acquire()  # before opening: a second server must not touch the file
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so one
            # group of batches is exactly one transaction.
            self._db = sqlite3.connect(self.path, isolation_level=None)
            try:
                self._db.execute(f"PRAGMA page_size={self.PAGE_SIZE:d}")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
                self._db.executescript(_SCHEMA)
                self._add_columns()
                self.winning_number = self._setting("winning_number", winning_number)
                self.round_id = self._round_id()
                self._round_date = self._date_setting(today)
                if agencies is not None:
                    self._setting("agencies", agencies)
                self.draw_mode = self._draw_mode(draw_mode)
                self._drawn = (
                    self._db.execute("SELECT 1 FROM settings WHERE name = 'drawn'").fetchone()
                    is not None
                )
                self._digests: dict[int, RunningDigest] = {}
                self._progress = self._load_progress()
            except BaseException:
                # A store that fails to open (corrupt file, other agency count)
                # must not leak its connection and the file handles behind it.
                self._db.close()
                raise
        except sqlite3.Error as exc:
            self._release_lock()
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _round_id(self) -> str:
        """The round's identity: made once, when the store is created, then kept."""
        self._db.execute("INSERT OR IGNORE INTO settings VALUES ('round_id', ?)", (new_round_id(),))
        row = self._db.execute("SELECT value FROM settings WHERE name = 'round_id'").fetchone()
        return str(row[0])

    def _setting(self, name: str, value: int | None) -> int:
        """The round setting ``name``: recorded on first use, then it must match.

        None takes what is recorded (or, for the winning number of a new store,
        the default): reading a store never requires restating how it was made.
        """
        row = self._db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        if value is None:
            if row is not None:
                return int(row[0])
            value = DEFAULT_WINNING_NUMBER
        if row is None:
            self._db.execute("INSERT INTO settings VALUES (?, ?)", (name, str(value)))
        elif int(row[0]) != value:
            what = {"agencies": "of {} agencies", "winning_number": "won by number {}"}[name]
            raise ConfigError(
                f"{self.path} holds a round {what.format(row[0])}, not {what.format(value)}; "
                "use another data directory"
            )
        return value

    def _add_columns(self) -> None:
        """Give a data directory from before protocol version 2 its new columns."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(agencies)")}
        for column, sql in _ADDED_COLUMNS.items():
            if column not in have:
                self._db.executescript(f"BEGIN; {sql}; COMMIT;")

    def _date_setting(self, today: str | None) -> str:
        """The round's date: recorded when the store is made, then kept."""
        row = self._db.execute("SELECT value FROM settings WHERE name = 'today'").fetchone()
        if row is not None:
            return str(row[0])
        value = today or clock.today()
        self._db.execute("INSERT INTO settings VALUES ('today', ?)", (value,))
        return value

    def _load_progress(self) -> dict[int, Progress]:
        """Every agency's progress, and its running digest rebuilt from its batches."""
        rows = self._db.execute(
            "SELECT agency, last_seq, committed_bets, input_rows, digest FROM agencies"
        ).fetchall()
        for agency, text in self._db.execute(
            "SELECT agency, records FROM batches ORDER BY agency, seq"
        ):
            running = self._digests.get(agency)
            if running is None:
                running = self._digests[agency] = agency_digest()
            running.update(text.encode())
        progress = {}
        for agency, last_seq, count, input_rows, stored in rows:
            digest = self._digests.setdefault(agency, agency_digest()).digest()
            if stored is not None and stored != digest:
                raise StoreError(
                    f"{self.path}: the stored bets of agency {agency} do not match its "
                    "recorded digest; the data directory is damaged"
                )
            progress[agency] = Progress(last_seq, count, input_rows, digest)
        return progress

    def round_agencies(self) -> int:
        """The round's agency count as recorded (0 if none is)."""
        with _reading("the settings"):
            value = self._text_setting("agencies")
        return int(value) if value is not None else 0

    def _text_setting(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _draw_mode(self, wanted: str | None) -> str:
        """The round's draw mode: recorded once; a random round's seed with it."""
        recorded = self._text_setting("draw_mode")
        if recorded is None:
            # A store from before draw modes that holds anything is a fixed round.
            old = self._db.execute("SELECT 1 FROM agencies LIMIT 1").fetchone() is not None
            recorded = MODE_FIXED if old or wanted is None else wanted
            self._db.execute("INSERT INTO settings VALUES ('draw_mode', ?)", (recorded,))
        if wanted is not None and wanted != recorded:
            raise ConfigError(
                f"{self.path} holds a round with a {recorded} draw, not a {wanted} one; "
                "use another data directory"
            )
        if recorded == MODE_RANDOM and self._text_setting("seed") is None:
            # Chosen here, when the round is created: before any bet can exist.
            seed = secrets.token_bytes(SEED_SIZE).hex()
            self._db.execute("INSERT OR IGNORE INTO settings VALUES ('seed', ?)", (seed,))
        return recorded

    def _winner_marks(self, number: int | None = None) -> tuple[str, ...]:
        # The number field, with each zero padding that still reads as the
        # winning number, between the separators around it: FS + "7574" + RS.
        digits = str(self.winning_number if number is None else number)
        return tuple(f"{FS}{'0' * pad}{digits}{RS}" for pad in range(5 - len(digits)))

    def progress(self, agency: int) -> Progress:
        return self._progress.get(agency, Progress())

    def all_progress(self) -> dict[int, Progress]:
        return dict(self._progress)

    def round_date(self) -> str:
        return self._round_date

    def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        if self._drawn:  # the winners are known: a bet now cannot take part
            return [Outcome.LATE] * len(batches)
        # Decide everything first, in Python; then write it in a handful of
        # statements. Each SQLite call hands the GIL to the event loop and
        # must win it back, which can take a whole switch interval (5 ms)
        # while the loop is busy: a statement per batch would make a group of
        # fifty batches wait a quarter of a second for the GIL alone.
        outcomes: list[Outcome] = []
        progress = dict(self._progress)  # published only once the commit succeeds
        digests: dict[int, RunningDigest] = {}  # copies, published with progress
        stored: list[tuple[int, int, int, bytes]] = []
        winners: list[tuple[int, str]] = []
        # In random mode the number is unknown until the draw: nothing to pick.
        marks = self._winner_marks() if self.draw_mode == MODE_FIXED else ()
        for batch in batches:
            last_seq, count, _, _ = progress.get(batch.agency, Progress())
            refused = refused_by_sequence(batch.seq, last_seq)
            if refused is not None:
                outcomes.append(refused)
                continue
            records = Records.of(batch.records)
            # The UTF-8 the wire carried: hashed and stored as it is, never re-encoded.
            data = records.utf8()
            stored.append((batch.agency, batch.seq, len(records), data))
            if any(mark in records.text for mark in marks):
                winners += [(batch.agency, d) for d in _marked_documents(records.text, marks)]
            running = digests.get(batch.agency)
            if running is None:
                base = self._digests.get(batch.agency)
                running = digests[batch.agency] = base.copy() if base else agency_digest()
            _hash_keeping_gil(running, data)
            # The digest is read once per agency below, not after every batch.
            progress[batch.agency] = Progress(batch.seq, count + len(records), batch.input_rows)
            outcomes.append(Outcome.STORED)
        for agency, running in digests.items():
            progress[agency] = progress[agency]._replace(digest=running.digest())
        changed = [
            (agency, *progress[agency])
            for agency in {b.agency for b in batches}
            if progress.get(agency) != self._progress.get(agency)
        ]
        db = self._db
        with _transaction(db, f"commit of {len(batches)} batches failed"):
            # CAST: SQLite keeps the UTF-8 bytes as they are, as TEXT (what readers get).
            _insert(db, "INSERT INTO batches VALUES {}", stored, "(?, ?, ?, CAST(? AS TEXT))")
            _insert(db, "INSERT INTO winners VALUES {}", winners)
            _insert(
                db,
                "INSERT INTO agencies (agency, last_seq, committed_bets, input_rows, digest) "
                "VALUES {} ON CONFLICT(agency) DO UPDATE SET "
                "last_seq = excluded.last_seq, committed_bets = excluded.committed_bets, "
                "input_rows = excluded.input_rows, digest = excluded.digest",
                changed,
            )
        self._progress = progress
        self._digests.update(digests)
        return outcomes

    def mark_done(self, agency: int) -> None:
        self.mark_done_many([agency])

    def mark_done_many(self, agencies: Sequence[int]) -> None:
        """`mark_done` for several agencies in one transaction (one fsync, not one each)."""
        if not agencies:
            return
        which = f"agency {agencies[0]}" if len(agencies) == 1 else f"{len(agencies)} agencies"
        with _transaction(self._db, f"cannot record {which} as done"):
            _insert(
                self._db,
                "INSERT INTO agencies (agency, done) VALUES {} "
                "ON CONFLICT(agency) DO UPDATE SET done = 1",
                [(agency,) for agency in agencies],
                "(?, 1)",
            )

    def done_agencies(self) -> set[int]:
        with _reading("the done agencies"):
            rows = self._db.execute("SELECT agency FROM agencies WHERE done = 1").fetchall()
        return {a for (a,) in rows}

    def drawn(self) -> bool:
        return self._drawn

    def draw(self) -> bool:
        if self.draw_mode == MODE_RANDOM:
            return self._draw_random()
        try:
            made = self._db.execute(
                "INSERT OR IGNORE INTO settings VALUES ('drawn', ?)", (self.winning_number,)
            ).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record the draw: {exc}") from exc
        self._drawn = True
        return made == 1

    def winners(self) -> dict[int, list[str]]:
        result: dict[int, list[str]] = {}
        with _reading("the winners"):
            rows = self._db.execute("SELECT agency, document FROM winners ORDER BY agency, rowid")
            for agency, document in rows:
                result.setdefault(agency, []).append(document)
        return result

    def bets(self) -> Iterator[tuple[int, str, str, str, str, int]]:
        with _reading("the bets"):
            for agency, text in self._db.execute(
                "SELECT agency, records FROM batches ORDER BY rowid"
            ):
                for first, last, document, birthdate, number in Records(text, 0):
                    yield agency, first, last, document, birthdate, int(number)

    def _draw_random(self) -> bool:
        """Record the draw, its number, winners and receipts in one transaction."""
        db = self._db
        with _transaction(db, "cannot record the draw"):
            made = db.execute("INSERT OR IGNORE INTO settings VALUES ('drawn', '')").rowcount
            if made != 1:
                db.execute("ROLLBACK")
                self._drawn = True
                return False
            state = self.draw_state()
            assert state.seed is not None
            number = derive_number(state.seed, state.reveals, state.beacon)
            scan = DrawScan(number)
            try:
                # As bytes: the digests want the UTF-8 bytes, and only the
                # records holding the number are ever decoded.
                for agency, count, data in db.execute(
                    "SELECT agency, bets, CAST(records AS BLOB) FROM batches ORDER BY agency, seq"
                ):
                    scan.feed(agency, count, data)
            except BaseException:
                scan.abort()
                raise
            digests, winners = scan.finish().digests, scan.winners
            _insert(db, "INSERT INTO winners VALUES {}", winners)
            _insert(
                db,
                "INSERT INTO receipts VALUES {}",
                [(a, d.bets, d.digest()) for a, d in sorted(digests.items())],
            )
            db.execute("INSERT INTO settings VALUES ('number', ?)", (str(number),))
        self._drawn = True
        return True

    def draw_state(self) -> DrawState:
        with _reading("the draw"):
            seed = self._text_setting("seed")
            beacon = self._text_setting("beacon") or ""
            commitments: dict[int, bytes] = {}
            reveals: dict[int, bytes] = {}
            refused: set[int] = set()
            for agency, commitment, nonce, wrong in self._db.execute(
                "SELECT agency, commitment, nonce, refused FROM draw_commitments ORDER BY agency"
            ):
                commitments[agency] = bytes(commitment)
                if nonce is not None:
                    reveals[agency] = bytes(nonce)
                if wrong:
                    refused.add(agency)
            receipts = {
                agency: (bets, bytes(digest))
                for agency, bets, digest in self._db.execute(
                    "SELECT agency, bets, digest FROM receipts ORDER BY agency"
                )
            }
            number = self._text_setting("number")
        if self.draw_mode == MODE_FIXED:
            number = str(self.winning_number) if self._drawn else None
        return DrawState(
            mode=self.draw_mode,
            seed=bytes.fromhex(seed) if seed else None,
            commitments=commitments,
            reveals=reveals,
            refused=refused,
            beacon=bytes.fromhex(beacon),
            drawn=self._drawn,
            number=int(number) if number is not None else None,
            receipts=receipts,
        )

    def commit_nonce(self, agency: int, commitment: bytes) -> bytes:
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO draw_commitments (agency, commitment) VALUES (?, ?)",
                (agency, commitment),
            )
            row = self._db.execute(
                "SELECT commitment FROM draw_commitments WHERE agency = ?", (agency,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record agency {agency}'s commitment: {exc}") from exc
        return bytes(row[0])

    def record_reveal(self, agency: int, nonce: bytes) -> bool:
        if self._drawn:  # too late: the number is fixed without it
            return False
        try:
            # Ordered with the draw by the one store thread: before it or not at all.
            changed = self._db.execute(
                "UPDATE draw_commitments SET nonce = ? WHERE agency = ? AND refused = 0 "
                "AND (nonce IS NULL OR nonce = ?)",
                (nonce, agency, nonce),
            ).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record agency {agency}'s reveal: {exc}") from exc
        return changed == 1

    def refuse_reveal(self, agency: int) -> None:
        try:
            self._db.execute(
                "UPDATE draw_commitments SET refused = 1 WHERE agency = ? AND nonce IS NULL",
                (agency,),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record agency {agency}'s refused reveal: {exc}") from exc

    def set_beacon(self, beacon: bytes) -> None:
        if self._drawn or self._text_setting("drawn") is not None:
            raise StoreError("the draw is made: too late for a beacon")
        try:
            self._db.execute(
                "INSERT INTO settings VALUES ('beacon', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (beacon.hex(),),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record the beacon: {exc}") from exc

    def close(self) -> None:
        self._db.close()
        self._release_lock()
