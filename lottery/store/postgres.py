"""`PostgresStore`: the store several servers share, on PostgreSQL (asyncpg).

Entry point: ``await PostgresStore.open(dsn, agencies=..., server_id=...)``.
It implements `SharedStore` natively on asyncio: no thread, a small
connection pool for the operations and one more connection that LISTENs.

Tables (schema version `SCHEMA_VERSION`, checked at open):

- ``round``: one row, the round's settings (id, date, agencies, winning
  number, draw mode, secret seed, beacon) and the draw (drawn, number, by
  which server, when);
- ``agencies``: per agency its progress (last sequence, bets, input
  position, agency digest), its fencing epoch and the server it speaks to;
- ``done``: the done marks;
- ``bets``: one row per bet, typed (``birthdate date``, ``number
  smallint``), with ``agency`` and ``seq``, and an ``id`` that orders the
  bets of one batch. Store order, for the export and the winners, is
  (agency, seq, id): each database session hands out ids from a cached
  block of its own, so across servers a later batch may get lower ids
  than an earlier one. What operators query;
- ``batches``: each batch's records exactly as the agency sent them (the
  bytes its agency digest is defined over, ``lottery.models.agency_digest``:
  a ``number`` of ``0042`` reads as 42 in ``bets``), so the receipts and a
  running digest can be recomputed byte for byte;
- ``winners``, ``commitments``, ``receipts``: the draw (docs/DRAW.md).

How each guarantee of lottery/store/base.py holds with several servers:

1. A commit is one transaction of six round trips (BEGIN, the locks, the
   COPY's two, one statement, COMMIT). It locks the group's ``agencies``
   rows (``FOR UPDATE``, in agency order, so two servers never deadlock)
   and the ``round`` row (3.) in one statement, decides
   DUPLICATE/GAP/STALE against them, loads the bets with one text COPY (the
   batches' UTF-8 bytes turned into COPY's text format by three C-speed
   ``bytes.replace`` calls, several times less client CPU than building a
   Python tuple per bet for a binary COPY), then inserts the batches and
   updates the progress in one statement. ``synchronous_commit`` is on: a
   returned commit is durable. Commits of one server may run at once
   (`COMMIT_LANES`), never two of one agency: two transactions could take
   its row lock in either order and judge a later batch first.
3. Commits take the ``round`` row ``FOR SHARE``, the draw takes it ``FOR
   UPDATE``: the draw waits for the commits in flight, and a commit that
   comes after it finds it drawn (every batch LATE). Under that lock the
   draw reads ``drawn`` and records itself in the same transaction, so a
   second draw waits and then finds it made: exactly one server's call
   returns True.
7. `admit` bumps the epoch under the same row lock, so it is ordered with
   every commit of that agency; a commit whose batch carries an older epoch
   finds out inside its transaction (STALE, nothing stored).

Each server keeps a running SHA-256 per agency it commits for, tagged with
the sequence it reached. When another server stored batches in between (a
failover), the tag no longer matches the locked row and the digest is
rebuilt from that agency's ``batches`` rows, inside the transaction.

Faults: every await is bounded (`OPERATION_TIMEOUT`, asyncpg's command
timeout). A lost connection (PostgreSQL restarted) makes the operation
raise `StoreError` with a plain message; the pool then drops its other
connections, and the next calls reconnect after a short, growing pause
(`_Reconnect`). A failed commit stored nothing (its transaction did not
commit) or, if only the reply was lost, everything: the agency's resend is
then DUPLICATE, acknowledged once more and stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import secrets
import socket
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import asyncpg
from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from .. import clock
from ..config import is_postgres_dsn
from ..draw import MODE_FIXED, MODE_RANDOM, SEED_SIZE, derive_number
from ..errors import ConfigError, StoreError
from ..models import (
    DEFAULT_WINNING_NUMBER,
    EMPTY_DIGEST,
    FS,
    RS,
    Records,
    RunningDigest,
    agency_digest,
)
from .base import DrawState, Outcome, PendingBatch, Progress, RoundView, refused_by_sequence
from .sqlite import new_round_id

__all__ = [
    "CHANNEL",
    "OPERATION_TIMEOUT",
    "SCHEMA_VERSION",
    "PostgresStore",
    "is_postgres_dsn",
    "safe_dsn",
]

#: The schema this code writes and reads; a database with another is refused.
SCHEMA_VERSION = 1
#: LISTEN/NOTIFY channel (NOTIFY is per database, so one name serves every round).
CHANNEL = "lottery_round"
#: Longest any store operation may take, connection included (the draw over
#: ten million bets takes about a second).
OPERATION_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
POOL_SIZE = 4
#: Groups the server's committer keeps in flight at once, each on its own
#: connection (lottery/committer.py: never two holding one agency). One: on
#: the two shared cores measured, two lanes halved the groups (more commits,
#: more CPU a bet) and the end-to-end round was slower in 4 of 5 alternating
#: pairs (docs/PERFORMANCE.md); where PostgreSQL has cores to spare, try 2.
COMMIT_LANES = 1
#: Rows fetched per round trip by the export's cursor.
FETCH_ROWS = 10_000
#: Longest wait for one of them: the first waits for PostgreSQL to sort every
#: bet into store order (no index on ``bets``: loading stays fast).
EXPORT_FETCH_TIMEOUT = 300.0
#: Pauses between reconnection attempts after a lost connection.
RECONNECT_FIRST, RECONNECT_MAX = 0.05, 1.0
# Serialises schema creation and the round row across servers starting at once.
_SETUP_LOCK = 0x6C6F7474  # "lott"

_SCHEMA = """
CREATE TABLE schema_version (version integer NOT NULL);
CREATE TABLE round (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    round_id text NOT NULL,
    round_date date NOT NULL,
    agencies integer,
    winning_number smallint NOT NULL,
    draw_mode text NOT NULL,
    seed bytea,  -- random mode: secret until the draw
    beacon bytea NOT NULL DEFAULT '',
    drawn boolean NOT NULL DEFAULT false,
    number smallint,
    drawn_by text,
    drawn_at timestamptz
);
CREATE TABLE agencies (
    agency integer PRIMARY KEY,
    last_seq bigint NOT NULL DEFAULT 0,
    committed_bets bigint NOT NULL DEFAULT 0,
    input_rows bigint NOT NULL DEFAULT 0,
    digest bytea,  -- NULL: no bets (the digest of nothing)
    epoch bigint NOT NULL DEFAULT 0,  -- fencing token, bumped by each admission
    server text  -- the server the agency is connected to; NULL: none
);
CREATE TABLE done (
    agency integer PRIMARY KEY,
    server text,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE batches (
    agency integer NOT NULL,
    seq bigint NOT NULL,
    bets integer NOT NULL,
    records bytea NOT NULL,  -- the record text as sent (lottery.models.Records), UTF-8
    PRIMARY KEY (agency, seq)
);
-- Already-compact text: compressing it would cost the database CPU for little.
ALTER TABLE batches ALTER COLUMN records SET STORAGE EXTERNAL;
CREATE TABLE bets (
    id bigint GENERATED ALWAYS AS IDENTITY (CACHE 4096),  -- order within a batch
    agency integer NOT NULL,
    seq bigint NOT NULL,
    first_name text NOT NULL,
    last_name text NOT NULL,
    document text NOT NULL,
    birthdate date NOT NULL,
    number smallint NOT NULL
);
CREATE TABLE winners (
    agency integer NOT NULL,
    document text NOT NULL,
    bet bigint NOT NULL  -- the winner's place in store order (agency, seq, id)
);
CREATE TABLE commitments (
    agency integer PRIMARY KEY,
    commitment bytea NOT NULL,  -- the agency's first commitment: never replaced
    nonce bytea,  -- its reveal, checked against the commitment; NULL: none (yet)
    refused boolean NOT NULL DEFAULT false  -- it revealed a wrong nonce: never another
);
CREATE TABLE receipts (
    agency integer PRIMARY KEY,
    bets bigint NOT NULL,
    digest bytea NOT NULL
);
"""

_BET_COLUMNS = ("agency", "seq", "first_name", "last_name", "document", "birthdate", "number")
# Names may hold a backslash, COPY's escape character; no field can hold a
# tab, a newline or a carriage return (they are control characters).

#: What a lost or broken connection looks like, as opposed to a refused statement.
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    TimeoutError,
)


def safe_dsn(dsn: str) -> str:
    """``dsn`` without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _plain(exc: BaseException) -> str:
    """One line saying what went wrong with the database."""
    if isinstance(exc, TimeoutError):
        return "PostgreSQL did not answer in time"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


_FS, _RS = FS.encode(), RS.encode()


def _copy_text(agency: int, seq: int, data: bytes) -> bytes:
    """A batch's records (``data``, UTF-8) as rows of COPY's text format, agency and seq first."""
    prefix = b"%d\t%d\t" % (agency, seq)
    # On the UTF-8 bytes (no byte of a multi-byte character is below 0x80, so
    # these never split one): no decoding, and bytes.replace is a memchr scan.
    body = data.replace(b"\\", b"\\\\").replace(_FS, b"\t").replace(_RS, b"\n" + prefix)
    return prefix + body[: -len(prefix)]  # the last RS gave a prefix with no row


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


class _Reconnect:
    """The pause before the next try after a lost connection: grows, capped, reset on success."""

    def __init__(self) -> None:
        self._delay = 0.0
        self._not_before = 0.0

    def failed(self) -> None:
        self._delay = min(RECONNECT_MAX, max(RECONNECT_FIRST, self._delay * 2))
        self._not_before = time.monotonic() + self._delay

    def succeeded(self) -> None:
        self._delay = 0.0

    async def wait(self) -> None:
        pause = self._not_before - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)


class PostgresStore:
    """`SharedStore` on a PostgreSQL database. Build it with `open`; see the module docstring."""

    def __init__(
        self,
        pool: asyncpg.Pool[Record],
        dsn: str,
        settings: Record,
        server_id: str,
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self.where = safe_dsn(dsn)
        self.server_id = server_id
        self.round_id: str = settings["round_id"]
        self.draw_mode: str = settings["draw_mode"]
        self.winning_number: int = settings["winning_number"]
        self.agencies: int = settings["agencies"] or 0
        self._round_date: str = settings["round_date"].isoformat()
        self._drawn: bool = settings["drawn"]
        #: agency -> (the last seq it covers, its running digest): see the module docstring.
        self._digests: dict[int, tuple[int, RunningDigest]] = {}
        self._reconnect = _Reconnect()
        # Tells this store's own notifications from other servers'.
        self._token = secrets.token_hex(8)
        self._listener: asyncpg.Connection[Record] | None = None
        self._changed = asyncio.Event()
        self._listening = asyncio.Lock()
        self._closed = False
        self.commit_lanes = COMMIT_LANES

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        agencies: int | None = None,
        winning_number: int | None = None,
        draw_mode: str | None = None,
        today: str | None = None,
        server_id: str | None = None,
        create: bool = True,
    ) -> PostgresStore:
        """Connect, check or create the schema and the round, and return the store.

        Args:
            dsn: ``postgresql://USER@HOST:PORT/DB``.
            agencies, winning_number, draw_mode: the round's settings; the
                database remembers them and refuses other ones. None takes
                what is stored (readers: export, verify).
            today: the round's date for a new round (default `lottery.clock.today`).
            server_id: this server among the store's users (default host:pid).
            create: make the round if the database holds none (readers pass False).

        Raises:
            StoreError: PostgreSQL cannot be reached or failed.
            ConfigError: the database holds another round, another schema or none.
        """
        where = safe_dsn(dsn)
        try:
            async with asyncio.timeout(OPERATION_TIMEOUT):
                pool = await asyncpg.create_pool(
                    dsn,
                    # No floor: asyncpg would keep reconnecting a floor in the background
                    # (logging a traceback a try) while PostgreSQL is down; this store
                    # reconnects on its next call instead, after `_Reconnect`'s pause.
                    min_size=0,
                    max_size=POOL_SIZE,
                    timeout=CONNECT_TIMEOUT,
                    command_timeout=OPERATION_TIMEOUT,
                    # An ack means durably stored, whatever the server's default.
                    server_settings={"synchronous_commit": "on", "application_name": "lottery"},
                    reset=_keep_session,
                )
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot reach PostgreSQL at {where}: {_plain(exc)}") from exc
        except ValueError as exc:  # a malformed DSN
            raise ConfigError(f"--store {where}: {exc}") from None
        try:
            async with asyncio.timeout(OPERATION_TIMEOUT), pool.acquire() as conn:
                settings = await _set_up(
                    conn, where, agencies, winning_number, draw_mode, today, create
                )
        except BaseException as exc:
            await _close_pool(pool)
            if isinstance(exc, _CONNECTION_ERRORS):  # the pool connects on first use
                raise StoreError(f"cannot reach PostgreSQL at {where}: {_plain(exc)}") from exc
            if isinstance(exc, asyncpg.PostgresError):
                raise StoreError(f"cannot open the store at {where}: {_plain(exc)}") from exc
            raise
        return cls(pool, dsn, settings, server_id or f"{socket.gethostname()}:{os.getpid()}")

    # -- the connection, bounded and reconnecting -------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(
        self, failure: str, *, bounded: bool = True
    ) -> AsyncIterator[PoolConnectionProxy[Record]]:
        """A pooled connection for one operation; errors become `StoreError(failure: ...)`.

        The whole operation has `OPERATION_TIMEOUT`; with ``bounded=False``
        (a long read, whose every fetch is bounded instead) only getting the
        connection is, and each statement by asyncpg's command timeout.
        """
        if self._closed:
            raise StoreError(f"{failure}: the store is closed")
        try:
            async with asyncio.timeout(OPERATION_TIMEOUT if bounded else None):
                await self._reconnect.wait()
                async with self._pool.acquire(timeout=OPERATION_TIMEOUT) as conn:
                    yield conn
        except _CONNECTION_ERRORS as exc:
            self._reconnect.failed()
            # The pool's other connections died with this one: drop them now,
            # rather than fail one operation each.
            await self._pool.expire_connections()
            raise StoreError(f"{failure}: {_plain(exc)}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"{failure}: {_plain(exc)}") from exc
        self._reconnect.succeeded()

    async def _notify(self, conn: PoolConnectionProxy[Record], kind: str) -> None:
        """Tell the other servers (in the caller's transaction: sent only if it commits)."""
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{kind} {self._token}")

    # -- progress ---------------------------------------------------------------------------

    async def progress(self, agency: int) -> Progress:
        async with self._connection(f"cannot read agency {agency}'s progress") as conn:
            row = await conn.fetchrow(
                "SELECT last_seq, committed_bets, input_rows, digest FROM agencies "
                "WHERE agency = $1",
                agency,
            )
        return _progress(row) if row is not None else Progress()

    async def all_progress(self) -> dict[int, Progress]:
        async with self._connection("cannot read the progress") as conn:
            return await _all_progress(conn)

    async def round_date(self) -> str:
        return self._round_date

    async def round_agencies(self) -> int:
        """The round's agency count as recorded (0 if none is)."""
        return self.agencies

    # -- commit -----------------------------------------------------------------------------

    async def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        if not batches:
            return []
        if self._drawn:
            return [Outcome.LATE] * len(batches)
        agencies = sorted({b.agency for b in batches})
        digests: dict[int, tuple[int, RunningDigest]] = {}
        async with (
            self._connection(f"commit of {len(batches)} batches failed") as conn,
            conn.transaction(),
        ):
            locked = await self._lock_agencies(conn, agencies)
            if locked is None:
                self._drawn = True
                return [Outcome.LATE] * len(batches)
            outcomes, copy, stored, changed = await self._decide(conn, batches, locked, digests)
            if stored:
                data = b"".join(copy)
                await conn.copy_to_table(
                    "bets", source=_one_chunk(data), columns=_BET_COLUMNS, format="text"
                )
                # The batches and the progress in one statement: one round trip.
                await conn.execute(
                    "WITH stored AS (INSERT INTO batches (agency, seq, bets, records) "
                    "SELECT * FROM unnest($1::integer[], $2::bigint[], $3::integer[], "
                    "$4::bytea[])) "
                    "UPDATE agencies a SET last_seq = u.last_seq, "
                    "committed_bets = u.bets, input_rows = u.input_rows, digest = u.digest "
                    "FROM unnest($5::integer[], $6::bigint[], $7::bigint[], $8::bigint[], "
                    "$9::bytea[]) AS u(agency, last_seq, bets, input_rows, digest) "
                    "WHERE a.agency = u.agency",
                    *zip(*stored, strict=True),
                    *zip(*changed, strict=True),
                )
        self._digests.update(digests)  # published only once the transaction committed
        return outcomes

    async def _lock_agencies(
        self, conn: PoolConnectionProxy[Record], agencies: list[int]
    ) -> dict[int, Record] | None:
        """Lock the progress rows of ``agencies`` (sorted), making the missing ones, and
        the ``round`` row FOR SHARE; None if the round is drawn (nothing to lock then)."""
        # One round trip for both locks. In agency order: two servers locking
        # overlapping groups never deadlock. FOR SHARE of the round: ordered with
        # the draw's FOR UPDATE (guarantee 3); a commit waiting for it reads the
        # row as the draw left it.
        select = (
            "SELECT a.agency, a.last_seq, a.committed_bets, a.input_rows, a.digest, a.epoch, "
            "r.drawn FROM agencies a CROSS JOIN round r WHERE a.agency = ANY($1::integer[]) "
            "ORDER BY a.agency FOR UPDATE OF a FOR SHARE OF r"
        )
        rows = await conn.fetch(select, agencies)
        if len(rows) < len(agencies):  # an agency's first batch (no admission made its row)
            await conn.execute(
                "INSERT INTO agencies (agency) SELECT unnest($1::integer[]) ON CONFLICT DO NOTHING",
                sorted(set(agencies) - {row["agency"] for row in rows}),
            )
            rows = await conn.fetch(select, agencies)
        if rows[0]["drawn"]:
            return None
        return {row["agency"]: row for row in rows}

    async def _decide(
        self,
        conn: PoolConnectionProxy[Record],
        batches: Sequence[PendingBatch],
        locked: dict[int, Record],
        digests: dict[int, tuple[int, RunningDigest]],
    ) -> tuple[
        list[Outcome],
        list[bytes],
        list[tuple[int, int, int, bytes]],
        list[tuple[int, int, int, int, bytes]],
    ]:
        """Each batch's outcome against the locked rows, and what to write for the stored ones."""
        outcomes: list[Outcome] = []
        copy: list[bytes] = []
        stored: list[tuple[int, int, int, bytes]] = []
        progress = {a: _progress(row) for a, row in locked.items()}
        for batch in batches:
            row = locked[batch.agency]
            last_seq, count, _, _ = progress[batch.agency]
            if batch.epoch and batch.epoch != row["epoch"]:
                outcomes.append(Outcome.STALE)
                continue
            refused = refused_by_sequence(batch.seq, last_seq)
            if refused is not None:
                outcomes.append(refused)
                continue
            records = Records.of(batch.records)
            data = records.utf8()
            running = digests.get(batch.agency)
            if running is None:
                base = await self._running_digest(conn, batch.agency, row)
                running = digests[batch.agency] = (row["last_seq"], base.copy())
            running[1].update(data)
            digests[batch.agency] = (batch.seq, running[1])
            copy.append(_copy_text(batch.agency, batch.seq, data))
            stored.append((batch.agency, batch.seq, len(records), data))
            progress[batch.agency] = Progress(
                batch.seq, count + len(records), batch.input_rows, running[1].digest()
            )
            outcomes.append(Outcome.STORED)
        changed = [
            (a, p.last_seq, p.committed_bets, p.input_rows, p.digest)
            for a, p in progress.items()
            if p != _progress(locked[a])
        ]
        return outcomes, copy, stored, changed

    async def _running_digest(
        self, conn: PoolConnectionProxy[Record], agency: int, row: Record
    ) -> RunningDigest:
        """The agency's running digest at the locked row's sequence; rebuilt if another
        server stored batches since this one last did."""
        cached = self._digests.get(agency)
        stored = row["digest"] or EMPTY_DIGEST
        if cached is not None and cached[0] == row["last_seq"] and cached[1].digest() == stored:
            return cached[1]
        running = agency_digest()
        async for (records,) in conn.cursor(
            "SELECT records FROM batches WHERE agency = $1 ORDER BY seq", agency, prefetch=64
        ):
            running.update(records)
        if running.digest() != stored:
            raise StoreError(
                f"{self.where}: the stored bets of agency {agency} do not match its "
                "recorded digest; the database is damaged"
            )
        return running

    # -- done marks, fencing, the round's view ----------------------------------------------

    async def mark_done(self, agency: int) -> None:
        async with (
            self._connection(f"cannot record agency {agency} as done") as conn,
            conn.transaction(),
        ):
            await conn.execute(
                "INSERT INTO done (agency, server) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                agency,
                self.server_id,
            )
            await self._notify(conn, "done")

    async def done_agencies(self) -> set[int]:
        async with self._connection("cannot read the done agencies") as conn:
            return {a for (a,) in await conn.fetch("SELECT agency FROM done")}

    async def admit(self, agency: int) -> tuple[int, Progress]:
        async with self._connection(f"cannot admit agency {agency}") as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO agencies (agency) VALUES ($1) ON CONFLICT DO NOTHING", agency
            )
            # The row lock orders this with every commit of the agency in flight.
            row = await conn.fetchrow(
                "UPDATE agencies SET epoch = epoch + 1, server = $2 WHERE agency = $1 "
                "RETURNING epoch, last_seq, committed_bets, input_rows, digest",
                agency,
                self.server_id,
            )
            await self._notify(conn, "admit")
        assert row is not None
        return int(row["epoch"]), _progress(row)

    async def release(self, agency: int, epoch: int) -> None:
        async with self._connection(f"cannot release agency {agency}") as conn, conn.transaction():
            status = await conn.execute(
                "UPDATE agencies SET server = NULL "
                "WHERE agency = $1 AND epoch = $2 AND server = $3",
                agency,
                epoch,
                self.server_id,
            )
            if status != "UPDATE 0":
                await self._notify(conn, "release")

    async def view(self) -> RoundView:
        # One snapshot: the done marks, the draw and the progress agree.
        async with (
            self._connection("cannot read the round") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            done = frozenset(a for (a,) in await conn.fetch("SELECT agency FROM done"))
            drawn = bool(await conn.fetchval("SELECT drawn FROM round"))
            progress = await _all_progress(conn)
            servers = {
                a: s
                for a, s in await conn.fetch(
                    "SELECT agency, server FROM agencies WHERE server IS NOT NULL"
                )
            }
        if drawn:
            self._drawn = True
        return RoundView(done=done, drawn=drawn, progress=progress, servers=servers)

    async def wait_changed(self, timeout: float) -> bool:
        """See `SharedStore.wait_changed`. Also True when the LISTEN connection was
        lost (notifications may have been missed: the caller reads the round). With
        no LISTEN connection to be had it just waits out ``timeout``: polling."""
        try:
            async with asyncio.timeout(timeout):
                async with self._listening:  # one listener, however many waiters
                    if self._listener is None or self._listener.is_closed():
                        try:
                            await self._listen()
                        except (*_CONNECTION_ERRORS, asyncpg.PostgresError):
                            await self._drop_listener()  # the next call tries again
                await self._changed.wait()
        except TimeoutError:
            return False
        self._changed.clear()
        return True

    async def _listen(self) -> None:
        """Open the dedicated LISTEN connection (closed ones are replaced)."""
        await self._drop_listener()
        conn = await asyncpg.connect(
            self._dsn, timeout=CONNECT_TIMEOUT, command_timeout=CONNECT_TIMEOUT
        )
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
            # Lost, it may have missed notifications: wake the waiter to read the round.
            conn.add_termination_listener(self._on_lost)
        except BaseException:
            conn.terminate()
            raise
        self._listener = conn

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        if not str(payload).endswith(self._token):
            self._changed.set()

    def _on_lost(self, conn: object) -> None:
        self._changed.set()

    async def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.remove_termination_listener(self._on_lost)
        if listener is not None and not listener.is_closed():
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await listener.close()
            except (*_CONNECTION_ERRORS, asyncpg.PostgresError):
                listener.terminate()

    # -- the draw ---------------------------------------------------------------------------

    async def drawn(self) -> bool:
        if not self._drawn:
            async with self._connection("cannot read the draw") as conn:
                self._drawn = bool(await conn.fetchval("SELECT drawn FROM round"))
        return self._drawn

    async def draw(self) -> bool:
        async with self._connection("cannot record the draw") as conn, conn.transaction():
            # FOR UPDATE: waits for the commits in flight (they hold it FOR SHARE).
            row = _one(
                await conn.fetchrow(
                    "SELECT drawn, seed, beacon, winning_number FROM round FOR UPDATE"
                )
            )
            if row["drawn"]:
                self._drawn = True
                return False
            if self.draw_mode == MODE_RANDOM:
                reveals = {
                    a: bytes(n)
                    for a, n in await conn.fetch(
                        "SELECT agency, nonce FROM commitments WHERE nonce IS NOT NULL"
                    )
                }
                number = derive_number(bytes(row["seed"]), reveals, bytes(row["beacon"]))
                await self._record_receipts(conn)
            else:
                number = row["winning_number"]
            # Winners by one scan of the typed bets: no index, no earlier pick. A
            # plain SELECT (an INSERT ... SELECT never runs in parallel) so that
            # PostgreSQL may split the scan over its parallel workers.
            found = await conn.fetch(
                "SELECT agency, seq, id, document FROM bets WHERE number = $1", number
            )
            ordered = sorted((w["agency"], w["seq"], w["id"], w["document"]) for w in found)
            await conn.copy_records_to_table(
                "winners",
                records=[(agency, doc, place) for place, (agency, _, _, doc) in enumerate(ordered)],
                columns=("agency", "document", "bet"),
            )
            await conn.execute(
                "UPDATE round SET drawn = true, number = $1, drawn_by = $2, drawn_at = now()",
                number,
                self.server_id,
            )
            await self._notify(conn, "draw")
        self._drawn = True
        return True

    async def _record_receipts(self, conn: PoolConnectionProxy[Record]) -> None:
        """Each agency's receipt, recomputed from its stored batches in sequence order."""
        receipts: dict[int, tuple[int, RunningDigest]] = {}
        async for agency, count, records in conn.cursor(
            "SELECT agency, bets, records FROM batches ORDER BY agency, seq", prefetch=256
        ):
            bets, running = receipts.get(agency) or (0, agency_digest())
            running.update(records)
            receipts[agency] = (bets + count, running)
        if receipts:
            await conn.copy_records_to_table(
                "receipts",
                records=[(a, n, d.digest()) for a, (n, d) in sorted(receipts.items())],
            )

    async def winners(self) -> dict[int, list[str]]:
        result: dict[int, list[str]] = {}
        async with self._connection("cannot read the winners") as conn:
            for agency, document in await conn.fetch(
                "SELECT agency, document FROM winners ORDER BY agency, bet"
            ):
                result.setdefault(agency, []).append(document)
        return result

    async def draw_state(self) -> DrawState:
        async with (
            self._connection("cannot read the draw") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = _one(await conn.fetchrow("SELECT seed, beacon, drawn, number FROM round"))
            commitments: dict[int, bytes] = {}
            reveals: dict[int, bytes] = {}
            refused: set[int] = set()
            for agency, commitment, nonce, wrong in await conn.fetch(
                "SELECT agency, commitment, nonce, refused FROM commitments ORDER BY agency"
            ):
                commitments[agency] = bytes(commitment)
                if nonce is not None:
                    reveals[agency] = bytes(nonce)
                if wrong:
                    refused.add(agency)
            receipts = {
                a: (int(n), bytes(d))
                for a, n, d in await conn.fetch(
                    "SELECT agency, bets, digest FROM receipts ORDER BY agency"
                )
            }
        drawn = bool(row["drawn"])
        self._drawn = self._drawn or drawn
        return DrawState(
            mode=self.draw_mode,
            seed=bytes(row["seed"]) if row["seed"] is not None else None,
            commitments=commitments,
            reveals=reveals,
            refused=refused,
            beacon=bytes(row["beacon"]),
            drawn=drawn,
            number=row["number"] if drawn else None,
            receipts=receipts,
        )

    async def commit_nonce(self, agency: int, commitment: bytes) -> bytes:
        async with (
            self._connection(f"cannot record agency {agency}'s commitment") as conn,
            conn.transaction(),
        ):
            await conn.execute(
                "INSERT INTO commitments (agency, commitment) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING",
                agency,
                commitment,
            )
            stored = await conn.fetchval(
                "SELECT commitment FROM commitments WHERE agency = $1", agency
            )
        return bytes(stored)

    async def record_reveal(self, agency: int, nonce: bytes) -> bool:
        if self._drawn:
            return False
        async with (
            self._connection(f"cannot record agency {agency}'s reveal") as conn,
            conn.transaction(),
        ):
            # Before the draw or not at all: the draw takes this row FOR UPDATE.
            if await conn.fetchval("SELECT drawn FROM round FOR SHARE"):
                self._drawn = True
                return False
            status = await conn.execute(
                "UPDATE commitments SET nonce = $1 WHERE agency = $2 AND NOT refused "
                "AND (nonce IS NULL OR nonce = $1)",
                nonce,
                agency,
            )
        return bool(status == "UPDATE 1")

    async def refuse_reveal(self, agency: int) -> None:
        async with self._connection(f"cannot record agency {agency}'s refused reveal") as conn:
            await conn.execute(
                "UPDATE commitments SET refused = true WHERE agency = $1 AND nonce IS NULL",
                agency,
            )

    async def set_beacon(self, beacon: bytes) -> None:
        """Store the outside beacon; `StoreError` once drawn."""
        async with self._connection("cannot record the beacon") as conn, conn.transaction():
            if await conn.fetchval("SELECT drawn FROM round FOR SHARE"):
                raise StoreError("the draw is made: too late for a beacon")
            await conn.execute("UPDATE round SET beacon = $1", beacon)

    # -- export -----------------------------------------------------------------------------

    async def bets(self) -> AsyncGenerator[tuple[int, str, str, str, str, int], None]:
        """Every stored bet, in store order (for the export), as `SQLiteStore.bets` gives it.

        Store order here is per agency, in its sequence order (the module
        docstring says why not by ``id`` alone): each agency's bets come as
        it sent them, and agencies one after the other.
        """
        # Ten million bets take longer than any one operation may: each fetch is
        # bounded instead (and the snapshot keeps the export consistent).
        async with (
            self._connection("cannot read the bets", bounded=False) as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            cursor = await conn.cursor(
                "SELECT agency, first_name, last_name, document, birthdate, number "
                "FROM bets ORDER BY agency, seq, id"
            )
            while rows := await cursor.fetch(FETCH_ROWS, timeout=EXPORT_FETCH_TIMEOUT):
                for agency, first, last, document, birthdate, number in rows:
                    yield agency, first, last, document, birthdate.isoformat(), number

    # -- closing ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._drop_listener()
        await _close_pool(self._pool)

    def __repr__(self) -> str:
        return f"<PostgresStore {self.where} round={self.round_id} server={self.server_id}>"


def _one(row: Record | None) -> Record:
    """The row a statement that always yields one returned."""
    assert row is not None
    return row


def _progress(row: Record) -> Progress:
    digest = row["digest"]
    return Progress(
        int(row["last_seq"]),
        int(row["committed_bets"]),
        int(row["input_rows"]),
        bytes(digest) if digest is not None else EMPTY_DIGEST,
    )


async def _all_progress(conn: PoolConnectionProxy[Record]) -> dict[int, Progress]:
    rows = await conn.fetch(
        "SELECT agency, last_seq, committed_bets, input_rows, digest FROM agencies "
        "WHERE last_seq > 0 ORDER BY agency"
    )
    return {row["agency"]: _progress(row) for row in rows}


async def _keep_session(conn: object) -> None:
    """A pooled connection's reset: none past asyncpg's own rollback of an open
    transaction. This store sets no session state (no SET, LISTEN, cursor or
    session lock outside a transaction), and the default reset's round trip
    costs every operation about a millisecond on a busy machine."""


async def _close_pool(pool: asyncpg.Pool[Record]) -> None:
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await pool.close()
    except (*_CONNECTION_ERRORS, asyncpg.PostgresError):
        pool.terminate()


async def _set_up(
    conn: PoolConnectionProxy[Record],
    where: str,
    agencies: int | None,
    winning_number: int | None,
    draw_mode: str | None,
    today: str | None,
    create: bool,
) -> Record:
    """Check (or create) the schema and the round's settings; returns the ``round`` row."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SETUP_LOCK)
        if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
            if not create:
                raise ConfigError(f"{where} holds no lottery round")
            await conn.execute(_SCHEMA)
            await conn.execute("INSERT INTO schema_version VALUES ($1)", SCHEMA_VERSION)
        version = await conn.fetchval("SELECT max(version) FROM schema_version")
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"{where} holds lottery schema version {version}, this lottery uses version "
                f"{SCHEMA_VERSION}; use a lottery that matches it or another database"
            )
        row = await conn.fetchrow("SELECT * FROM round")
        if row is None:
            if not create:
                raise ConfigError(f"{where} holds no lottery round")
            mode = draw_mode or MODE_FIXED
            await conn.execute(
                "INSERT INTO round (round_id, round_date, agencies, winning_number, draw_mode, "
                "seed) VALUES ($1, $2, $3, $4, $5, $6)",
                new_round_id(),
                datetime.date.fromisoformat(today or clock.today()),
                agencies,
                DEFAULT_WINNING_NUMBER if winning_number is None else winning_number,
                mode,
                # Chosen now, when the round is created: before any bet can exist.
                secrets.token_bytes(SEED_SIZE) if mode == MODE_RANDOM else None,
            )
            row = _one(await conn.fetchrow("SELECT * FROM round"))
        _check(where, "agencies", row["agencies"], agencies, "of {} agencies")
        _check(where, "winning_number", row["winning_number"], winning_number, "won by {}")
        _check(where, "draw_mode", row["draw_mode"], draw_mode, "with a {} draw")
        if agencies is not None and row["agencies"] is None:
            await conn.execute("UPDATE round SET agencies = $1", agencies)
            row = _one(await conn.fetchrow("SELECT * FROM round"))
    return row


def _check(where: str, name: str, stored: Any, wanted: Any, what: str) -> None:
    """Refuse a database made for another round (one line, as SQLite's data directory does)."""
    if wanted is not None and stored is not None and stored != wanted:
        raise ConfigError(
            f"{where} holds a round {what.format(stored)}, not {what.format(wanted)}; "
            "use another database"
        )
