"""`AsyncAgency` against a real in-process server, a cuttable proxy, and fake servers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from lottery.client import AsyncAgency
from lottery.errors import ConnectionLost, ServerRefused, WinnersUnavailable
from lottery.models import Bet
from lottery.protocol import (
    MAX_FRAME_SIZE,
    Ack,
    Batch,
    ClientProtocol,
    ErrorCode,
    FrameType,
    Hello,
    Message,
    NotReady,
    ServerProtocol,
    Welcome,
    Winners,
    WinnersQuery,
    encode,
)
from lottery.store.sqlite import new_round_id

from .conftest import UNIT
from .helpers import (
    LOOPBACK,
    REPLY_TIMEOUT,
    CuttableProxy,
    data_dir_of,
    fake_server,
    log_events,
    make_rows,
    running_server,
    stored_bets,
    write_agency_file,
)

pytestmark = pytest.mark.timeout(60)

Row = tuple[str, str, str, str, str]


def agency(agency_id: int, port: int, **options: object) -> AsyncAgency:
    """An `AsyncAgency` with test-sized timeouts and back-offs (``options`` override)."""
    settings: dict[str, object] = {
        "timeout": REPLY_TIMEOUT,
        "winners_base_delay": 0.01 * UNIT,
        "winners_timeout": REPLY_TIMEOUT,
        "reconnect_base_delay": 0.01 * UNIT,
        "reconnect_attempts": 5,
    }
    settings.update(options)
    return AsyncAgency(agency_id, LOOPBACK, port, **settings)  # type: ignore[arg-type]


def as_stored(agency_id: int, rows: list[Row]) -> list[tuple[object, ...]]:
    """``rows`` as `stored_bets` returns them for ``agency_id``."""
    return [(agency_id, *row[:4], int(row[4])) for row in rows]


def batch_counts(frames: list[tuple[int, bytes]]) -> list[int]:
    """The bet count of every BATCH frame among ``frames``."""
    return [struct.unpack_from("!H", f, 9)[0] for t, f in frames if t == FrameType.BATCH]


def batch_seqs(frames: list[tuple[int, bytes]]) -> list[int]:
    """The sequence of every BATCH frame among ``frames``."""
    return [struct.unpack_from("!I", f, 5)[0] for t, f in frames if t == FrameType.BATCH]


# -- batching ---------------------------------------------------------------------------------


async def test_batches_are_cut_by_count(tmp_path: Path) -> None:
    """With batch_max_amount=10, 25 bets go as batches of 10, 10 and 5, all stored in order."""
    rows = make_rows(25)
    async with (
        running_server(tmp_path) as server,
        CuttableProxy(server.port) as proxy,
        agency(1, proxy.port, batch_max_amount=10) as client,
    ):
        report = await client.send_bets(rows)
    assert batch_counts(proxy.client_frames) == [10, 10, 5]
    assert batch_seqs(proxy.client_frames) == [1, 2, 3]
    assert report.acknowledged == 25
    assert stored_bets(data_dir_of(tmp_path)) == as_stored(1, rows)


async def test_batches_are_cut_by_bytes_before_8_kib(tmp_path: Path) -> None:
    """Long names make the 8 KiB frame limit cut batches first; every frame fits and is full."""
    long_first, long_last = "Ñ" * 100, "Á" * 100  # 200 UTF-8 bytes each
    rows = [(long_first, long_last, *row[2:]) for row in make_rows(100)]
    record_size = len("\x1f".join(rows[0]).encode()) + 1
    async with (
        running_server(tmp_path) as server,
        CuttableProxy(server.port) as proxy,
        agency(1, proxy.port, batch_max_amount=200) as client,
    ):
        report = await client.send_bets(rows)
    batches = [f for t, f in proxy.client_frames if t == FrameType.BATCH]
    assert len(batches) > 1
    assert all(len(frame) <= MAX_FRAME_SIZE for frame in batches)
    assert all(len(frame) + record_size > MAX_FRAME_SIZE for frame in batches[:-1])
    assert sum(batch_counts(proxy.client_frames)) == 100
    assert report.acknowledged == 100
    assert stored_bets(data_dir_of(tmp_path)) == as_stored(1, rows)


@pytest.mark.parametrize(
    ("count", "batch_max_amount", "max_in_flight"),
    [
        (0, 5, 2),  # nothing to send
        (1, 1, 1),  # stop-and-wait
        (20, 5, 2),  # a multiple of the batch size and of the window
        (21, 5, 2),  # neither: a short last batch
        (30, 5, 4),  # a multiple of the batch size, not of the window
        (23, 4, 3),  # neither, odd numbers
    ],
)
async def test_every_bet_arrives_exactly_once(
    tmp_path: Path, count: int, batch_max_amount: int, max_in_flight: int
) -> None:
    """Whatever the row count against batch size and window, nothing is lost or stored twice."""
    rows = make_rows(count)
    async with running_server(tmp_path) as server:
        async with agency(
            1, server.port, batch_max_amount=batch_max_amount, max_in_flight=max_in_flight
        ) as client:
            report = await client.send_bets(rows)
        assert client.batches_sent == -(-count // batch_max_amount)
    assert report.acknowledged == count
    assert report.rejected == []
    assert stored_bets(data_dir_of(tmp_path)) == as_stored(1, rows)


# -- the in-flight window ---------------------------------------------------------------------


async def test_in_flight_window_is_never_exceeded(tmp_path: Path) -> None:
    """The agency keeps at most max_in_flight batches unacknowledged; each ack frees one slot."""
    window = 3
    quiet = 0.15 * UNIT  # how long "nothing more arrives" is watched for
    observed: dict[str, int] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocol = ServerProtocol()
        pending: list[Message] = []

        async def next_message(timeout: float) -> Message:
            while not pending:
                async with asyncio.timeout(timeout):
                    data = await reader.read(65536)
                if not data:
                    raise ConnectionResetError
                protocol.receive_data(data)
                while (message := protocol.next_event(TODAY)) is not None:
                    pending.append(message)
            return pending.pop(0)

        async def more_within(timeout: float) -> list[Message]:
            """Whatever else arrives within ``timeout`` (a full window: nothing)."""
            extra: list[Message] = []
            with contextlib.suppress(TimeoutError):
                while True:
                    extra.append(await next_message(timeout))
            return extra

        assert isinstance(await next_message(REPLY_TIMEOUT), Hello)
        writer.write(protocol.send(Welcome(0, 0)))
        batches = [await next_message(REPLY_TIMEOUT) for _ in range(window)]
        batches += await more_within(quiet)
        observed["before_any_ack"] = len(batches)
        writer.write(encode(Ack(1)))  # one slot frees...
        after = [await next_message(REPLY_TIMEOUT)]
        after += await more_within(quiet)  # ...and only one
        observed["after_first_ack"] = len(after)
        # From now on, acknowledge everything as it comes.
        messages = batches + after
        while True:
            last = messages[-1]
            assert isinstance(last, Batch)
            writer.write(encode(Ack(last.seq)))
            try:
                messages = [await next_message(REPLY_TIMEOUT)]
            except ConnectionResetError:
                return

    async with (
        fake_server(handle) as port,
        agency(1, port, batch_max_amount=2, max_in_flight=window) as client,
    ):
        report = await client.send_bets(make_rows(20))
    assert observed == {"before_any_ack": window, "after_first_ack": 1}
    assert report.acknowledged == 20


# -- reconnecting ----------------------------------------------------------------------------

TODAY = datetime.date.today().isoformat()
WELCOME_SIZE = len(encode(Welcome(0, 0, round_id=new_round_id())))  # ids have one length
ACK_SIZE = len(encode(Ack(1)))


@pytest.mark.parametrize(
    "cut_after",
    [
        {0: WELCOME_SIZE + 2 * ACK_SIZE},  # after two acks
        {0: WELCOME_SIZE, 1: WELCOME_SIZE + ACK_SIZE + 3},  # twice, once mid-frame
    ],
    ids=["after-two-acks", "twice"],
)
async def test_lost_connection_reconnects_and_stores_every_bet_once(
    tmp_path: Path, cut_after: dict[int, int]
) -> None:
    """When the line drops after some acks, the agency reconnects and resends; nothing doubles."""
    rows = make_rows(40)
    async with running_server(tmp_path) as server, CuttableProxy(server.port, cut_after) as proxy:
        async with agency(1, proxy.port, batch_max_amount=5, max_in_flight=4) as client:
            report = await client.send_bets(rows)
            await client.notify()
        assert proxy.cuts == len(cut_after)
        assert client.reconnects == len(cut_after)
    assert set(batch_seqs(proxy.client_frames)) == set(range(1, 9))
    for number in range(1, proxy.connections):  # each reconnect resends only the unstored
        welcome = ClientProtocol()
        welcome.receive_data(proxy.received[number][0][1])
        last_seq = welcome.next_event()
        assert isinstance(last_seq, Welcome)
        assert all(seq > last_seq.last_seq for seq in batch_seqs(proxy.sent[number]))
    assert report.acknowledged == 40
    assert stored_bets(data_dir_of(tmp_path)) == as_stored(1, rows)


async def test_restarted_agency_skips_what_is_already_stored(tmp_path: Path) -> None:
    """A second AsyncAgency (a restarted process) given the same file skips the stored bets."""
    rows = make_rows(50)
    bad = ("Luis", "Gómez", "not-a-number", "1990-01-01", "12")
    first_part = write_agency_file(tmp_path / "part.csv", [*rows[:10], bad, *rows[10:30]])
    whole = write_agency_file(tmp_path / "whole.csv", [*rows[:10], bad, *rows[10:]])
    async with running_server(tmp_path) as server:
        async with agency(1, server.port, batch_max_amount=7) as client:
            first = await client.send_bets(first_part)  # then the process "dies"
        async with agency(1, server.port, batch_max_amount=7) as client:
            second = await client.send_bets(whole)
    assert (first.acknowledged, first.skipped, len(first.rejected)) == (30, 0, 1)
    assert (second.acknowledged, second.skipped, len(second.rejected)) == (20, 30, 1)
    assert second.rejected[0].line == 11
    assert stored_bets(data_dir_of(tmp_path)) == as_stored(1, rows)


async def test_restarted_agency_resumes_without_connecting_first(tmp_path: Path) -> None:
    """send_bets on an agency never connected shakes hands before numbering or skipping bets."""
    rows = make_rows(20)
    async with running_server(tmp_path) as server:
        async with agency(1, server.port, batch_max_amount=3) as client:
            await client.send_bets(rows[:8])
        client = agency(1, server.port, batch_max_amount=3)
        try:
            report = await client.send_bets(rows)
        finally:
            await client.aclose()
    assert (report.acknowledged, report.skipped) == (12, 8)
    assert stored_bets(data_dir_of(tmp_path)) == as_stored(1, rows)


# -- what gets sent ---------------------------------------------------------------------------


async def test_send_bets_takes_bet_objects_filed_under_the_agency(tmp_path: Path) -> None:
    """An iterable of Bet objects is sent, and stored under the agency's own id, not the Bet's."""
    rows = make_rows(12)
    bets = (Bet(99, r[0], r[1], r[2], r[3], int(r[4])) for r in rows)
    async with (
        running_server(tmp_path) as server,
        agency(2, server.port, batch_max_amount=5) as client,
    ):
        report = await client.send_bets(bets)
    assert report.acknowledged == 12
    assert stored_bets(data_dir_of(tmp_path)) == as_stored(2, rows)


async def test_invalid_rows_are_rejected_and_not_sent(tmp_path: Path) -> None:
    """Invalid rows go to report.rejected with their position and reason, and are never sent."""
    good = make_rows(4)
    items: list[tuple[str, ...]] = [
        good[0],
        ("Ana", "Pérez", "12a", "1990-01-01", "5"),  # bad document
        good[1],
        ("Ana", "Pérez", "123", "2999-01-01", "5"),  # born in the future
        ("Ana", "Pérez", "123", "1990-01-01"),  # four fields
        good[2],
        ("", "Pérez", "123", "1990-01-01", "5"),  # empty first name
        good[3],
    ]
    async with (
        running_server(tmp_path) as server,
        CuttableProxy(server.port) as proxy,
        agency(1, proxy.port, batch_max_amount=2) as client,
    ):
        report = await client.send_bets(items)
    assert [r.line for r in report.rejected] == [2, 4, 5, 7]
    assert "document" in report.rejected[0].reason
    assert "future" in report.rejected[1].reason
    assert report.acknowledged == 4
    assert sum(batch_counts(proxy.client_frames)) == 4
    assert stored_bets(data_dir_of(tmp_path)) == as_stored(1, good)


# -- refusals and failures ---------------------------------------------------------------------


async def test_unknown_agency_id_raises_server_refused(tmp_path: Path) -> None:
    """An agency id outside the server's 1..N is refused at once with ServerRefused."""
    async with running_server(tmp_path, agencies=2) as server:
        with pytest.raises(ServerRefused) as refused:
            async with agency(3, server.port):
                pass
    assert refused.value.code == ErrorCode.UNKNOWN_AGENCY


@pytest.fixture
def unused_port() -> Iterator[int]:
    """A loopback port bound (so no one else takes it) but not listening: connections fail."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        yield int(sock.getsockname()[1])


async def test_nothing_listening_raises_connection_lost(unused_port: int) -> None:
    """With nothing listening, connecting gives up after reconnect_attempts with ConnectionLost."""
    client = agency(1, unused_port, reconnect_attempts=3)
    with pytest.raises(ConnectionLost, match="after 3 attempts"):
        await client.connect()
    await client.aclose()


# -- done and winners ----------------------------------------------------------------------------


async def test_winners_not_ready_retries_then_raises_winners_unavailable(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """While the draw is pending, winners() retries NOT_READY with back-off, naming the missing."""
    async with (
        running_server(tmp_path, agencies=2, timeout_winners=0.05 * UNIT) as server,
        agency(1, server.port, winners_attempts=3) as client,
    ):
        await client.notify()
        with pytest.raises(
            WinnersUnavailable, match="3 attempts: the draw waits for agency 2 missing"
        ):
            await client.winners()
    # The agency's retries (the server logs its not-ready answers as in_progress too).
    retries = log_events(
        log_stream,
        "consulta_ganadores",
        result="in_progress",
        agencia=1,
        motivo="waiting for the draw: agency 2 missing",
    )
    assert [retry["intento"] for retry in retries] == ["1", "2"]


async def test_winners_retries_until_the_draw_answers() -> None:
    """winners() asks again after NOT_READY and returns the documents once they come."""
    queries: list[float] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocol = ServerProtocol()
        while data := await reader.read(65536):
            protocol.receive_data(data)
            while (message := protocol.next_event(TODAY)) is not None:
                if isinstance(message, Hello):
                    writer.write(protocol.send(Welcome(0, 0)))
                elif isinstance(message, WinnersQuery):
                    queries.append(asyncio.get_running_loop().time())
                    answer = NotReady() if len(queries) < 3 else Winners(("30000001", "7"))
                    writer.write(encode(answer))

    base = 0.02 * UNIT
    async with (
        fake_server(handle) as port,
        agency(1, port, winners_attempts=5, winners_base_delay=base) as client,
    ):
        assert await client.winners() == ["30000001", "7"]
    assert len(queries) == 3
    # Back-off with ±50 % jitter: at least half the base delay, then half its double.
    assert queries[1] - queries[0] >= 0.5 * base
    assert queries[2] - queries[1] >= 0.5 * 2 * base


async def test_whole_round_returns_each_agency_its_winners(tmp_path: Path) -> None:
    """Two agencies run whole rounds at once; each gets its own winners once both are done."""
    rows = {1: make_rows(30, winners=[0, 17]), 2: make_rows(9, start=1000, winners=[4])}
    async with running_server(tmp_path, agencies=2, timeout_winners=REPLY_TIMEOUT) as server:

        async def one(agency_id: int) -> list[str]:
            async with agency(agency_id, server.port, batch_max_amount=4) as client:
                result = await client.run(rows[agency_id])
            assert result.report.acknowledged == len(rows[agency_id])
            return result.winners

        winners = await asyncio.gather(one(1), one(2))
    assert winners == [
        [rows[1][0][2], rows[1][17][2]],
        [rows[2][4][2]],
    ]


async def test_notify_is_acknowledged_and_repeatable(tmp_path: Path) -> None:
    """notify() waits for the server's ack, and saying done twice is harmless."""
    async with running_server(tmp_path, agencies=2) as server:
        async with agency(1, server.port) as client:
            await client.notify()
            await client.notify()
        assert server.round.barrier.done == {1}


async def test_single_bet_is_sent_and_stored(tmp_path: Path) -> None:
    """send_bet sends one bet on its own (tp0 ej5) and returns once it is stored."""
    (row,) = make_rows(1)
    async with running_server(tmp_path) as server, agency(1, server.port) as client:
        await client.send_bet(row)
    assert stored_bets(data_dir_of(tmp_path)) == as_stored(1, [row])


async def test_a_server_that_always_drops_the_line_ends_in_connection_lost() -> None:
    """Reconnects that never get a batch acknowledged are bounded: ConnectionLost, not a loop."""
    handshakes = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal handshakes
        await reader.read(64)  # the HELLO
        handshakes += 1
        writer.write(encode(Welcome(0, 0)))
        await writer.drain()
        await reader.read(1)  # the first batch arrives: drop the line without an ack

    async with fake_server(handle) as port, agency(1, port, reconnect_attempts=3) as client:
        with pytest.raises(ConnectionLost, match="3 times in a row"):
            await client.send_bets(make_rows(5))
    assert handshakes == 3


async def test_ack_latencies_are_recorded_per_batch(tmp_path: Path) -> None:
    """Each acknowledged batch leaves one send-to-ack latency on the agency."""
    async with running_server(tmp_path) as server, agency(1, server.port) as client:
        await client.send_bets(make_rows(10))
    assert client.batches_sent == 1
    assert len(client.ack_latencies) == 1
    assert 0 <= client.ack_latencies[0] < REPLY_TIMEOUT
