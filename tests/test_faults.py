"""Faults the server must survive: a full or read-only store, a missing agency, silent peers."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from lottery.client import AsyncAgency
from lottery.config import ServerConfig
from lottery.errors import StoreError
from lottery.protocol import (
    Ack,
    Batch,
    Done,
    Error,
    ErrorCode,
    Hello,
    Status,
    StatusQuery,
    Welcome,
    Winners,
    WinnersQuery,
    encode,
)
from lottery.server import Server
from lottery.store import Outcome, PendingBatch, SQLiteStore

from .conftest import UNIT
from .helpers import (
    LOOPBACK,
    log_events,
    make_rows,
    raw_connection,
    running_server,
    stored_bets,
)

pytestmark = pytest.mark.timeout(60)

ROW = ("Ana", "Díaz", "30904465", "1999-03-17", "7574")


class FaultyStore(SQLiteStore):
    """A real store whose disk can be made full or read-only, and healed again."""

    #: Small pages: a test batch (about 7 KB) always needs a new one.
    PAGE_SIZE = 4096

    def fill_disk(self) -> None:
        # SQLite's own "disk full" path: no page may be added past the current count.
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        self._db.execute(f"PRAGMA max_page_count = {pages}")

    def make_read_only(self) -> None:
        self._db.execute("PRAGMA query_only = 1")

    #: Commits still to refuse with a storage error (a disk that fills, then frees up).
    failures_left = 0

    def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        if self.failures_left:
            self.failures_left -= 1
            raise StoreError("disk full (injected)")
        return super().commit(batches)

    def heal(self) -> None:
        self._db.execute("PRAGMA query_only = 0")
        self._db.execute("PRAGMA max_page_count = 1073741823")


@asynccontextmanager
async def faulty_server(tmp_path: Path, **config: Any) -> AsyncIterator[Server]:
    """A started server whose store is a `FaultyStore`."""

    def open_store(cfg: ServerConfig) -> FaultyStore:
        return FaultyStore(cfg.data_dir, cfg.agencies, cfg.winning_number, cfg.sync)

    async with running_server(tmp_path, open_store, **config) as server:
        yield server


def big_batch(seq: int, first_document: int) -> Batch:
    """A batch of 50 long-named bets (about 7 KB): it needs new pages in the store."""
    names = ("Ana" * 20, "Díaz" * 10)
    rows = [(*names, str(first_document + i), "1999-03-17", "1") for i in range(50)]
    return Batch(seq, rows)


@pytest.mark.parametrize("fault", ["fill_disk", "make_read_only"])
async def test_a_storage_fault_refuses_the_batch_and_the_server_goes_on(
    tmp_path: Path, log_stream: io.StringIO, fault: str
) -> None:
    """A full or read-only store: ERROR STORAGE, never an ack, a fail line; then it heals."""
    async with faulty_server(tmp_path) as server, raw_connection(server.port, agency=1) as conn:
        await server.store.call(lambda s: getattr(s, fault)())
        await conn.send(big_batch(1, 1000))
        reply = await conn.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.STORAGE
        (line,) = log_events(log_stream, "apuesta_recibida", result="fail")
        assert line["cantidad"] == "50"
        await conn.send(StatusQuery())  # the server still serves this connection
        assert isinstance(await conn.receive(), Status)

        await server.store.call(lambda s: s.heal())
        await conn.send(big_batch(1, 1000))  # the same batch again, same sequence
        assert await conn.receive() == Ack(1)
    assert len(stored_bets(tmp_path / "data")) == 50


async def test_an_agency_retries_through_a_storage_fault(tmp_path: Path) -> None:
    """AsyncAgency resends a batch refused for a storage fault, and nothing is lost or doubled."""
    async with faulty_server(tmp_path) as server:

        def fail_twice(store: FaultyStore) -> None:
            store.failures_left = 2

        await server.store.call(fail_twice)  # type: ignore[arg-type]
        agency = AsyncAgency(
            1, LOOPBACK, server.port, batch_max_amount=20, reconnect_base_delay=0.05 * UNIT
        )
        async with agency:
            report = await asyncio.wait_for(agency.send_bets(make_rows(100)), 30 * UNIT)
        assert report.acknowledged == 100
        assert agency.reconnects >= 1  # it met the fault and came back
    documents = [bet[3] for bet in stored_bets(tmp_path / "data")]
    assert sorted(documents) == sorted({*documents}) and len(documents) == 100


async def test_the_draw_deadline_draws_without_the_missing(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """With --draw-deadline, the draw happens without the agencies still missing, named in a log."""
    async with (
        faulty_server(tmp_path, agencies=3, draw_deadline=0.3 * UNIT) as server,
        raw_connection(server.port, agency=1) as one,
        raw_connection(server.port, agency=2) as two,
    ):
        await one.send(Batch(1, [ROW]), Done(), WinnersQuery())
        assert await one.receive() == Ack(1)
        assert await one.receive() == Ack(0)
        assert await one.receive(timeout=10 * UNIT) == Winners(("30904465",))
        (early,) = log_events(log_stream, "sorteo", result="in_progress")
        assert early["faltantes"] == "2 3"
        assert len(log_events(log_stream, "sorteo", result="success")) == 1
        # A late agency's bets can no longer take part.
        await two.send(Batch(1, [("Beto", "Ruiz", "1", "1990-01-01", "7574")]))
        reply = await two.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.DRAW_MADE
    assert [bet[3] for bet in stored_bets(tmp_path / "data")] == ["30904465"]


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1) == b""
    except ConnectionError:
        return True


async def test_a_silent_or_dripping_peer_is_dropped_at_the_handshake_deadline(
    tmp_path: Path,
) -> None:
    """A connection that never says who it is loses its slot after timeout_handshake."""
    async with faulty_server(tmp_path, timeout_handshake=0.3 * UNIT) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
        async with asyncio.timeout(5 * UNIT):
            assert await _closed_by_server(reader)  # the silent one
        writer.close()

        reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
        closed = False
        for _ in range(50):  # one byte every 0.1 s, never a whole HELLO
            try:
                writer.write(b"\x00")
                await writer.drain()
                async with asyncio.timeout(0.1 * UNIT):
                    closed = await _closed_by_server(reader)
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
            if closed:
                break
        writer.close()
        assert closed
        assert loop.time() - started < 3 * UNIT
        # A well-behaved agency is still welcome.
        async with raw_connection(server.port) as conn:
            await conn.send(Hello(1))
            assert await conn.receive() == Welcome(0, 0)


async def test_a_restarted_agency_after_an_unclean_disconnect_gets_an_exact_welcome(
    tmp_path: Path,
) -> None:
    """A new connection waits for the old one's batches to settle before WELCOME reports them."""
    async with faulty_server(tmp_path) as server:
        old = await asyncio.open_connection(LOOPBACK, server.port)
        old[1].write(encode(Hello(1)) + b"".join(encode(big_batch(s, s * 1000)) for s in (1, 2)))
        await old[1].drain()
        async with raw_connection(server.port) as new:
            await new.send(Hello(1))
            welcome = await new.receive()
        old[1].close()
        stored = stored_bets(tmp_path / "data")
        assert isinstance(welcome, Welcome)
        assert welcome.committed_bets == len(stored)
        assert welcome.last_seq == len(stored) // 50
