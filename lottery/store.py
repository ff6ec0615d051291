"""Durable storage of bets, agency progress and the draw, behind `Store`.

`Store` is the small synchronous interface the server needs; `SQLiteStore` is
the embedded default (stdlib sqlite3, WAL, one file in the data directory).
A shared PostgreSQL store for several servers can implement the same methods.

Nothing here is async, and an `SQLiteStore` must be used from one thread
only: `lottery.committer.Committer` owns that thread and keeps it off the
event loop.

What the store guarantees, and the server builds on:

- `commit` stores a group of batches in one transaction. When it returns, the
  transaction is on disk (``synchronous=FULL`` by default), so the server may
  acknowledge every batch in it. If it raises, none of the group is stored.
- Per agency it keeps the last committed batch sequence and bet count, in the
  same transaction as the bets. A batch whose sequence is already committed is
  reported `Outcome.DUPLICATE` and not stored again: resends are harmless.
- Which agencies are done, and whether the draw happened, are stored too, so a
  restarted server neither forgets a done agency nor draws twice.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import ConfigError, StoreError
from .protocol import Record

__all__ = ["DB_FILENAME", "SYNC_MODES", "Outcome", "PendingBatch", "SQLiteStore", "Store"]

DB_FILENAME = "lottery.db"
SYNC_MODES = ("FULL", "NORMAL", "OFF")


class Outcome(enum.Enum):
    """What `Store.commit` did with one batch."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # its sequence was already committed: acknowledge again
    GAP = "gap"  # its sequence skips ahead of the last committed one: refuse


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """One batch waiting for a commit: whose, which sequence, which bets."""

    agency: int
    seq: int
    records: Sequence[Record]


class Store(Protocol):
    """What the server needs from a bet store. Every method blocks."""

    def progress(self, agency: int) -> tuple[int, int]:
        """(last committed sequence, committed bets) of ``agency``."""
        ...

    def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        """Store ``batches`` in one durable transaction; one outcome per batch."""
        ...

    def mark_done(self, agency: int) -> None:
        """Durably record that ``agency`` has sent all its bets."""
        ...

    def done_agencies(self) -> set[int]: ...

    def drawn(self) -> bool: ...

    def draw(self, winning_number: int) -> dict[int, list[str]]:
        """Mark the draw as made and return each agency's winning documents."""
        ...

    def winners(self, winning_number: int) -> dict[int, list[str]]:
        """Each agency's winning documents (for a server restarted after the draw)."""
        ...

    def bets(self) -> Iterator[tuple[int, str, str, str, str, int]]:
        """Every stored bet, in the order it was stored."""
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS bets (
    agency INTEGER NOT NULL,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    document TEXT NOT NULL,
    birthdate TEXT NOT NULL,
    number INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agencies (
    agency INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL DEFAULT 0,
    committed_bets INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {what}: {exc}") from exc


class SQLiteStore:
    """`Store` on one SQLite file in WAL mode. Use from a single thread.

    Args:
        data_dir: directory for ``lottery.db`` (created if missing).
        agencies: the round's agency count; a data directory remembers it and
            refuses to be reopened with another one.
        winning_number: the number that wins; a partial index keeps only the
            winning bets, so the draw reads a few rows, not every bet.
        synchronous: SQLite's ``synchronous`` pragma: FULL (default; an
            acknowledged batch survives power loss), NORMAL or OFF.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        agencies: int | None = None,
        winning_number: int = 7574,
        synchronous: str = "FULL",
    ) -> None:
        if synchronous.upper() not in SYNC_MODES:
            raise ConfigError(f"synchronous must be one of {', '.join(SYNC_MODES)}")
        self.path = Path(data_dir) / DB_FILENAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so one
            # group of batches is exactly one transaction.
            self._db = sqlite3.connect(self.path, isolation_level=None)
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
                self._db.executescript(_SCHEMA)
                self._db.execute(
                    f"CREATE INDEX IF NOT EXISTS winners_{int(winning_number)} "
                    f"ON bets(agency) WHERE number = {int(winning_number)}"
                )
                if agencies is not None:
                    self._check_agencies(agencies)
                self._progress = {
                    agency: (last_seq, count)
                    for agency, last_seq, count in self._db.execute(
                        "SELECT agency, last_seq, committed_bets FROM agencies"
                    )
                }
            except BaseException:
                # A store that fails to open (corrupt file, other agency count)
                # must not leak its connection and the file handles behind it.
                self._db.close()
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    def _check_agencies(self, agencies: int) -> None:
        row = self._db.execute("SELECT value FROM settings WHERE name = 'agencies'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO settings VALUES ('agencies', ?)", (str(agencies),))
        elif int(row[0]) != agencies:
            raise ConfigError(
                f"{self.path} holds a round of {row[0]} agencies, not {agencies}; "
                "use another data directory"
            )

    def progress(self, agency: int) -> tuple[int, int]:
        return self._progress.get(agency, (0, 0))

    def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        progress = dict(self._progress)  # published only once the commit succeeds
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for batch in batches:
                    last_seq, count = progress.get(batch.agency, (0, 0))
                    if batch.seq <= last_seq:
                        outcomes.append(Outcome.DUPLICATE)
                        continue
                    if batch.seq != last_seq + 1:
                        outcomes.append(Outcome.GAP)
                        continue
                    # The agency id is an int we own, never client text, so it
                    # is safe in the SQL; the number column's INTEGER affinity
                    # turns the wire's digits into an integer inside SQLite.
                    db.executemany(
                        f"INSERT INTO bets VALUES ({int(batch.agency)}, ?, ?, ?, ?, ?)",
                        batch.records,
                    )
                    progress[batch.agency] = (batch.seq, count + len(batch.records))
                    outcomes.append(Outcome.STORED)
                changed = [
                    (agency, *progress[agency])
                    for agency in {b.agency for b in batches}
                    if progress.get(agency) != self._progress.get(agency)
                ]
                db.executemany(
                    "INSERT INTO agencies (agency, last_seq, committed_bets) VALUES (?, ?, ?) "
                    "ON CONFLICT(agency) DO UPDATE SET "
                    "last_seq = excluded.last_seq, committed_bets = excluded.committed_bets",
                    changed,
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"commit of {len(batches)} batches failed: {exc}") from exc
        self._progress = progress
        return outcomes

    def mark_done(self, agency: int) -> None:
        try:
            self._db.execute(
                "INSERT INTO agencies (agency, done) VALUES (?, 1) "
                "ON CONFLICT(agency) DO UPDATE SET done = 1",
                (agency,),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record agency {agency} as done: {exc}") from exc

    def done_agencies(self) -> set[int]:
        with _reading("the done agencies"):
            rows = self._db.execute("SELECT agency FROM agencies WHERE done = 1").fetchall()
        return {a for (a,) in rows}

    def drawn(self) -> bool:
        with _reading("the draw state"):
            row = self._db.execute("SELECT value FROM settings WHERE name = 'drawn'").fetchone()
        return row is not None

    def draw(self, winning_number: int) -> dict[int, list[str]]:
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO settings VALUES ('drawn', ?)", (winning_number,)
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record the draw: {exc}") from exc
        return self.winners(winning_number)

    def winners(self, winning_number: int) -> dict[int, list[str]]:
        with _reading("the winners"):
            return self._winners(winning_number)

    def _winners(self, winning_number: int) -> dict[int, list[str]]:
        result: dict[int, list[str]] = {}
        # A literal (not a parameter) so SQLite can use the partial index, and
        # ordered as that index is (agency, then rowid) so no sort is needed.
        for agency, document in self._db.execute(
            f"SELECT agency, document FROM bets WHERE number = {int(winning_number)} "
            "ORDER BY agency"
        ):
            result.setdefault(agency, []).append(document)
        return result

    def bets(self) -> Iterator[tuple[int, str, str, str, str, int]]:
        yield from self._db.execute("SELECT * FROM bets ORDER BY rowid")

    def close(self) -> None:
        self._db.close()
