"""The central server, driven with raw frames over loopback TCP."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
from pathlib import Path

import pytest

from lottery.config import ServerConfig
from lottery.errors import StoreError
from lottery.protocol import (
    MAX_FRAME_SIZE,
    Ack,
    Batch,
    Done,
    Error,
    ErrorCode,
    Hello,
    NotReady,
    SingleBet,
    Welcome,
    Winners,
    WinnersQuery,
)
from lottery.server import Server
from lottery.store import PendingBatch, SQLiteStore

from .conftest import UNIT
from .helpers import (
    LOOPBACK,
    REPLY_TIMEOUT,
    WINNING_NUMBER,
    RawConnection,
    data_dir_of,
    log_events,
    make_rows,
    raw_connection,
    running_server,
    stored_bets,
)

pytestmark = pytest.mark.timeout(60)


async def expect_error(conn: RawConnection, code: ErrorCode) -> Error:
    """Receive the next frame and check it is an ERROR with ``code``."""
    reply = await conn.receive()
    assert isinstance(reply, Error), reply
    assert reply.code == code, reply
    return reply


async def send_round(conn: RawConnection, seq: int, rows: list[tuple[str, ...]]) -> None:
    """Send one batch and check it is acknowledged with its sequence."""
    await conn.send(Batch(seq, rows))  # type: ignore[arg-type]
    assert await conn.receive() == Ack(seq)


# -- handshake and batches -----------------------------------------------------------------


async def test_handshake_of_a_new_agency_gets_welcome_zero(tmp_path: Path) -> None:
    """A first handshake is answered with WELCOME(0, 0): nothing stored yet."""
    async with running_server(tmp_path) as server, raw_connection(server.port) as conn:
        assert await conn.hello(1) == Welcome(0, 0)


async def test_batch_is_acked_with_its_seq_and_stored(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """A batch is acknowledged with its sequence only once stored, and logged with its size."""
    rows = make_rows(3)
    async with running_server(tmp_path) as server:
        async with raw_connection(server.port, agency=1) as conn:
            await send_round(conn, 1, rows)
        async with raw_connection(server.port) as conn:
            welcome = await conn.hello(1)
            assert isinstance(welcome, Welcome)
            assert (welcome.last_seq, welcome.committed_bets) == (1, 3)
    assert stored_bets(data_dir_of(tmp_path)) == [(1, *r[:4], int(r[4])) for r in rows]
    assert log_events(log_stream, "apuesta_recibida", result="success", cantidad=3, agencia=1)


async def test_single_bet_is_acked_and_logged_with_document_and_number(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """A lone BET (tp0 ej5) is acknowledged and logged as apuesta_almacenada with dni and numero."""
    (row,) = make_rows(1)
    async with running_server(tmp_path) as server, raw_connection(server.port, 1) as conn:
        await conn.send(SingleBet(1, row))
        assert await conn.receive() == Ack(1)
    assert log_events(log_stream, "apuesta_almacenada", result="success", dni=row[2], numero=row[4])


async def test_resent_batch_is_acked_again_and_stored_once(tmp_path: Path) -> None:
    """A batch sent twice with the same sequence is acknowledged both times and stored once."""
    rows = make_rows(4)
    async with running_server(tmp_path) as server, raw_connection(server.port, 1) as conn:
        await send_round(conn, 1, rows)
        await send_round(conn, 1, rows)
    assert len(stored_bets(data_dir_of(tmp_path))) == 4


async def test_sequence_skipping_ahead_is_refused_and_connection_stays_usable(
    tmp_path: Path,
) -> None:
    """A batch whose sequence skips ahead gets BAD_SEQUENCE, is not stored; the line lives on."""
    async with running_server(tmp_path) as server, raw_connection(server.port, 1) as conn:
        await conn.send(Batch(3, make_rows(2)))
        await expect_error(conn, ErrorCode.BAD_SEQUENCE)
        await send_round(conn, 1, make_rows(1))
    assert len(stored_bets(data_dir_of(tmp_path))) == 1


async def test_invalid_bet_refuses_the_batch_naming_its_index(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """A batch with an invalid bet gets INVALID_BET naming its index; the connection lives on."""
    rows = make_rows(3)
    rows[1] = (rows[1][0], rows[1][1], "12a45", rows[1][3], rows[1][4])
    async with running_server(tmp_path) as server, raw_connection(server.port, 1) as conn:
        await conn.send(Batch(1, rows))
        error = await expect_error(conn, ErrorCode.INVALID_BET)
        assert "bet 1" in error.message
        assert "document" in error.message
        await send_round(conn, 1, make_rows(2))
    assert len(stored_bets(data_dir_of(tmp_path))) == 2
    assert log_events(log_stream, "apuesta_recibida", result="fail", cantidad=3)


async def test_bets_are_filed_under_the_handshake_agency(tmp_path: Path) -> None:
    """The agency is the one named in the handshake: a batch cannot name another."""
    async with running_server(tmp_path, agencies=3) as server:
        async with raw_connection(server.port, 2) as conn:
            await send_round(conn, 1, make_rows(2))
        async with raw_connection(server.port, 3) as conn:
            await send_round(conn, 1, make_rows(1, start=100))
    assert sorted(b[0] for b in stored_bets(data_dir_of(tmp_path))) == [2, 2, 3]


# -- refusals that close the connection --------------------------------------------------------


async def test_frame_before_hello_is_refused_and_closed(tmp_path: Path) -> None:
    """A batch before the handshake gets an OUT_OF_ORDER error and the connection is closed."""
    async with running_server(tmp_path) as server, raw_connection(server.port) as conn:
        await conn.send(Batch(1, make_rows(1)))
        await expect_error(conn, ErrorCode.OUT_OF_ORDER)
        await conn.expect_eof()
    assert stored_bets(data_dir_of(tmp_path)) == []


async def test_bets_after_done_are_refused_and_closed(tmp_path: Path) -> None:
    """A batch after DONE on the same connection gets OUT_OF_ORDER and the connection is closed."""
    async with running_server(tmp_path) as server, raw_connection(server.port, 1) as conn:
        await conn.send(Done())
        assert await conn.receive() == Ack(0)
        await conn.send(Batch(1, make_rows(1)))
        await expect_error(conn, ErrorCode.OUT_OF_ORDER)
        await conn.expect_eof()
    assert stored_bets(data_dir_of(tmp_path)) == []


async def test_bets_of_a_done_agency_on_a_new_connection_are_refused(tmp_path: Path) -> None:
    """An agency that said it is done cannot add bets by reconnecting."""
    async with running_server(tmp_path) as server:
        async with raw_connection(server.port, 1) as conn:
            await send_round(conn, 1, make_rows(1))
            await conn.send(Done())
            assert await conn.receive() == Ack(0)
        async with raw_connection(server.port, 1) as conn:
            await conn.send(Batch(2, make_rows(1, start=1)))
            await expect_error(conn, ErrorCode.OUT_OF_ORDER)
            await conn.expect_eof()
    assert len(stored_bets(data_dir_of(tmp_path))) == 1


async def test_oversized_length_header_is_refused_and_closed(tmp_path: Path) -> None:
    """A header announcing more than 8 KiB gets BAD_FRAME before any body, then a close."""
    async with running_server(tmp_path) as server, raw_connection(server.port, 1) as conn:
        await conn.send(struct.pack("!IB", MAX_FRAME_SIZE * 100, 0x03))
        await expect_error(conn, ErrorCode.BAD_FRAME)
        await conn.expect_eof()


@pytest.mark.parametrize("agency", [0, 3])
async def test_unknown_agency_is_refused(tmp_path: Path, agency: int) -> None:
    """An agency id outside 1..N gets UNKNOWN_AGENCY and the connection is closed."""
    async with running_server(tmp_path, agencies=2) as server, raw_connection(server.port) as conn:
        await conn.send(Hello(agency))
        await expect_error(conn, ErrorCode.UNKNOWN_AGENCY)
        await conn.expect_eof()


async def test_bad_protocol_version_is_refused(tmp_path: Path) -> None:
    """A handshake in an unknown protocol version gets BAD_VERSION and the connection is closed."""
    async with running_server(tmp_path) as server, raw_connection(server.port) as conn:
        await conn.send(Hello(1, version=99))
        await expect_error(conn, ErrorCode.BAD_VERSION)
        await conn.expect_eof()


# -- readiness and the draw ---------------------------------------------------------------------


async def done(port: int, agency: int) -> None:
    """Connect as ``agency``, say DONE, check the ack, and disconnect."""
    async with raw_connection(port, agency) as conn:
        await conn.send(Done())
        assert await conn.receive() == Ack(0)


async def test_readiness_is_keyed_by_agency_id_across_reconnects(tmp_path: Path) -> None:
    """Agency 1's DONE survives its reconnect, and agency 2's DONE then opens the barrier."""
    async with running_server(tmp_path, agencies=2) as server:
        await done(server.port, 1)
        async with raw_connection(server.port, 1) as conn:  # back, on a new connection
            assert not server.round.barrier.opened
            await done(server.port, 2)
            assert server.round.barrier.opened
            await conn.send(WinnersQuery())
            assert await conn.receive() == Winners(())


async def test_repeated_done_counts_once(tmp_path: Path) -> None:
    """With two agencies, agency 1 saying DONE twice (even on two connections) opens nothing."""
    async with running_server(tmp_path, agencies=2) as server:
        async with raw_connection(server.port, 1) as conn:
            for _ in range(2):
                await conn.send(Done())
                assert await conn.receive() == Ack(0)
        await done(server.port, 1)
        assert server.round.barrier.done == {1}
        assert not server.round.barrier.opened
        assert server.round.barrier.missing == [2]


async def test_connection_closing_after_done_changes_nothing(tmp_path: Path) -> None:
    """A done agency's connection closing (mid winners query) neither undoes nor opens anything."""
    async with running_server(tmp_path, agencies=2) as server:
        async with raw_connection(server.port, 1) as conn:
            await conn.send(Done())
            assert await conn.receive() == Ack(0)
            await conn.send(WinnersQuery())  # left waiting when the line closes
        assert server.round.barrier.done == {1}
        assert not server.round.barrier.opened
        async with raw_connection(server.port, 1) as conn:  # the query still works later
            await done(server.port, 2)
            await conn.send(WinnersQuery())
            assert await conn.receive() == Winners(())


async def test_winners_query_before_the_draw_answers_not_ready_after_the_limit(
    tmp_path: Path,
) -> None:
    """A winners query before the draw waits up to a server-side limit, then answers not-ready."""
    limit = 0.2 * UNIT
    async with (
        running_server(tmp_path, timeout_winners=limit) as server,
        raw_connection(server.port, 1) as conn,
    ):
        await conn.send(Done())
        assert await conn.receive() == Ack(0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await conn.send(WinnersQuery())
        assert await conn.receive() == NotReady(1, (2,))  # it says who the draw waits for
        assert loop.time() - started >= limit * 0.9
        # The connection stays usable: ask again.
        await conn.send(WinnersQuery())
        assert await conn.receive() == NotReady(1, (2,))


async def test_winners_query_waiting_on_a_long_idle_connection_is_kept(tmp_path: Path) -> None:
    """A winners query held longer than the idle limit does not get its connection timed out."""
    async with (
        running_server(tmp_path, timeout_winners=0.3 * UNIT, timeout_idle=0.1 * UNIT) as server,
        raw_connection(server.port, 1) as conn,
    ):
        await conn.send(WinnersQuery())
        assert await conn.receive() == NotReady(2, (1, 2))
        await conn.send(WinnersQuery())
        assert await conn.receive() == NotReady(2, (1, 2))


async def test_waiting_winners_query_is_answered_by_the_draw(tmp_path: Path) -> None:
    """A winners query held before the draw is answered with the winners as soon as it is made."""
    async with (
        running_server(tmp_path, timeout_winners=30 * UNIT) as server,
        raw_connection(server.port, 1) as conn,
    ):
        await send_round(conn, 1, make_rows(2, winners=[1]))
        await conn.send(Done(), WinnersQuery())
        assert await conn.receive() == Ack(0)
        await done(server.port, 2)
        reply = await conn.receive()
    assert reply == Winners((make_rows(2)[1][2],))


async def test_each_agency_gets_only_its_own_winners_and_draw_is_logged_once(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """After the draw each agency gets only its own winners, and the draw is logged once."""
    rows = {1: make_rows(5, winners=[0, 3]), 2: make_rows(4, start=100, winners=[2]), 3: []}
    async with running_server(tmp_path, agencies=3) as server:
        conns = {}
        for agency, agency_rows in rows.items():
            conns[agency] = conn = await RawConnection.open(server.port)
            await conn.hello(agency)
            if agency_rows:
                await send_round(conn, 1, agency_rows)
            await conn.send(Done())
            assert await conn.receive() == Ack(0)
        try:
            for agency, conn in conns.items():
                await conn.send(WinnersQuery())
                reply = await conn.receive()
                expected = tuple(r[2] for r in rows[agency] if r[4] == str(WINNING_NUMBER))
                assert reply == Winners(expected), agency
        finally:
            for conn in conns.values():
                await conn.close()
    (draw,) = log_events(log_stream, "sorteo", result="success")
    assert draw["cant_ganadores"] == "3"


async def test_restarted_server_remembers_done_agencies(tmp_path: Path) -> None:
    """A server restarted on the same data dir still counts agencies done before the restart."""
    async with running_server(tmp_path, agencies=2) as server:
        async with raw_connection(server.port, 1) as conn:
            await send_round(conn, 1, make_rows(1, winners=[0]))
        await done(server.port, 1)
    async with running_server(tmp_path, agencies=2) as server:
        assert server.round.barrier.done == {1}
        await done(server.port, 2)
        assert server.round.drawn
        async with raw_connection(server.port, 1) as conn:
            await conn.send(WinnersQuery())
            assert await conn.receive() == Winners((make_rows(1)[0][2],))


async def test_restarted_server_does_not_draw_twice_and_still_answers(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """After a restart following the draw, there is no second draw and winners are still served."""
    winner = make_rows(1)[0][2]
    async with running_server(tmp_path, agencies=2) as server:
        async with raw_connection(server.port, 1) as conn:
            await send_round(conn, 1, make_rows(1, winners=[0]))
        await done(server.port, 1)
        await done(server.port, 2)
    async with running_server(tmp_path, agencies=2) as server:
        await done(server.port, 2)  # a repeat after the restart: harmless
        async with raw_connection(server.port, 1) as conn:
            await conn.send(WinnersQuery())
            assert await conn.receive() == Winners((winner,))
    assert len(log_events(log_stream, "sorteo", result="success")) == 1


async def test_server_started_after_every_agency_was_done_makes_the_draw(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """A server stopped between the last DONE and the draw makes the draw when it starts again."""
    (row,) = make_rows(1, winners=[0])
    store = SQLiteStore(data_dir_of(tmp_path), agencies=2)
    try:
        store.commit([PendingBatch(1, 1, [row])])
        store.mark_done(1)
        store.mark_done(2)
    finally:
        store.close()
    async with running_server(tmp_path, agencies=2) as server:
        assert server.round.drawn
        async with raw_connection(server.port, 1) as conn:
            await conn.send(WinnersQuery())
            assert await conn.receive() == Winners((row[2],))
    assert len(log_events(log_stream, "sorteo", result="success")) == 1


# -- limits and shutdown ---------------------------------------------------------------------------


async def test_connection_limit_refuses_the_excess_clearly(tmp_path: Path) -> None:
    """With the limit at N, the N+1-th connection gets TOO_MANY_CONNECTIONS and is closed."""
    async with running_server(tmp_path, agencies=2, limit_connections=2) as server:
        async with (
            raw_connection(server.port, 1),
            raw_connection(server.port, 2),
            raw_connection(server.port) as extra,
        ):
            error = await expect_error(extra, ErrorCode.TOO_MANY_CONNECTIONS)
            assert "2 connections" in error.message
            await extra.expect_eof()
        # Once the others are gone there is room again.
        async with raw_connection(server.port, 1):
            pass


async def test_idle_connection_times_out(tmp_path: Path, log_stream: io.StringIO) -> None:
    """A connection that sends nothing for timeout_idle seconds is closed by the server."""
    async with (
        running_server(tmp_path, timeout_idle=0.2 * UNIT) as server,
        raw_connection(server.port, 1) as conn,
    ):
        await conn.expect_eof()
    assert log_events(log_stream, "idle_timeout", result="success", agencia=1)


async def test_shutdown_with_a_silent_client_is_bounded_and_closes_resources(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """close() with a silent client finishes within the grace period and logs what it closes."""
    grace = 0.5 * UNIT
    async with running_server(tmp_path, timeout_graceful_shutdown=grace) as server:
        conn = await RawConnection.open(server.port)
        try:
            await conn.hello(1)
            loop = asyncio.get_running_loop()
            started = loop.time()
            server.close()
            async with asyncio.timeout(grace + 1.0 * UNIT):
                await server.wait_closed()
            assert loop.time() - started < grace + 1.0 * UNIT
            await conn.expect_eof()
        finally:
            await conn.close()
    assert log_events(log_stream, "close_resource", result="success", resource="connection")
    assert log_events(log_stream, "close_resource", result="success", resource="store")
    assert log_events(log_stream, "shutdown", result="success")


async def test_winners_query_waiting_at_shutdown_gets_shutting_down(tmp_path: Path) -> None:
    """A winners query held at shutdown is answered with SHUTTING_DOWN instead of hanging."""
    async with (
        running_server(tmp_path, timeout_winners=30 * UNIT) as server,
        raw_connection(server.port) as conn,
    ):
        # One write, so the server reads the query along with what it acknowledges.
        await conn.send(Hello(1), Done(), WinnersQuery())
        assert await conn.receive() == Welcome(0, 0)
        assert await conn.receive() == Ack(0)
        server.close()
        error = await expect_error(conn, ErrorCode.SHUTTING_DOWN)
        assert "shutting down" in error.message
        await conn.expect_eof()
        async with asyncio.timeout(REPLY_TIMEOUT):
            await server.wait_closed()


async def test_failed_start_closes_the_store(tmp_path: Path) -> None:
    """A server that cannot listen (its port is taken) raises OSError and leaves no store open."""

    def store_threads() -> int:
        return sum(t.name.startswith("lottery-store") for t in threading.enumerate())

    async with running_server(tmp_path) as first:
        before = store_threads()
        second = Server(ServerConfig(host=LOOPBACK, port=first.port, data_dir=str(tmp_path / "b")))
        with pytest.raises(OSError):
            await second.start()
        assert store_threads() == before


async def test_close_twice_is_safe(tmp_path: Path) -> None:
    """Calling close() twice, and wait_closed() after, shuts down once without error."""
    async with running_server(tmp_path) as server:
        server.close()
        server.close()
        await server.wait_closed()
        await server.wait_closed()
        assert server._listener is not None
        assert not server._listener.is_serving()
    server.close()  # and once more after the context manager's own close
    await server.wait_closed()


class _DrawFailsOnce(SQLiteStore):
    """A real store whose first draw fails, as a full disk would make it."""

    failed = False

    def draw(self) -> dict[int, list[str]]:
        if not _DrawFailsOnce.failed:
            _DrawFailsOnce.failed = True
            raise StoreError("disk full (injected)")
        return super().draw()


async def test_a_failed_draw_is_made_again_on_the_next_winners_query(tmp_path: Path) -> None:
    """If the store fails during the draw, the next winners query draws again and is answered."""
    config = ServerConfig(host="127.0.0.1", port=0, agencies=1, data_dir=str(tmp_path), sync="OFF")
    server = Server(config, open_store=lambda: _DrawFailsOnce(tmp_path, 1, 7574, "OFF"))
    await server.start()
    try:
        async with raw_connection(server.port, agency=1) as conn:
            await conn.send(Batch(1, [("Ana", "Díaz", "1", "1990-01-01", "7574")]), Done())
            assert await conn.receive() == Ack(1)
            assert await conn.receive() == Ack(0)  # done is stored, though the draw failed
            assert not server.round.drawn
            await conn.send(WinnersQuery())
            assert await conn.receive() == Winners(("1",))
    finally:
        server.close()
        await server.wait_closed()


async def test_no_bet_is_stored_after_its_agency_said_done(tmp_path: Path) -> None:
    """A batch on another connection, right behind the agency's DONE, is refused, not stored."""
    async with running_server(tmp_path, agencies=2, sync="FULL") as server:
        first = await RawConnection.open(server.port)
        late = await RawConnection.open(server.port)
        try:
            await first.hello(1)
            await first.send(Batch(1, make_rows(2)))
            assert await first.receive() == Ack(1)
            await first.send(Done())
            await late.send(Hello(1), Batch(2, make_rows(3, start=100)))
            assert await first.receive() == Ack(0)
            replies = [await late.receive(), await late.receive()]
            assert isinstance(replies[0], Welcome)
            assert isinstance(replies[1], Error) and replies[1].code == ErrorCode.OUT_OF_ORDER
        finally:
            await first.close()
            await late.close()
    assert len(stored_bets(data_dir_of(tmp_path))) == 2
