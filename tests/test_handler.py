"""Handler against a fake round: the connection's I/O and ordering, with no store or server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from lottery.config import ServerConfig
from lottery.errors import ErrorCode, StoreError
from lottery.protocol import (
    Ack,
    Batch,
    ClientProtocol,
    Done,
    DrawInfo,
    DrawQuery,
    Error,
    Hello,
    Message,
    NotReady,
    Status,
    StatusQuery,
    Welcome,
    Winners,
    WinnersQuery,
    encode,
)
from lottery.round import RoundStats, Speaker, WinnersWait
from lottery.server import Handler
from lottery.store import Outcome, Progress

from .helpers import LOOPBACK, REPLY_TIMEOUT, make_rows

pytestmark = pytest.mark.timeout(30)


class FakeRound:
    """Just what a `Handler` asks of its round, recorded, with answers a test can set."""

    def __init__(self) -> None:
        self.stats = RoundStats()
        self.round_id = "r-test"
        self.submitted: list[tuple[int, int, int]] = []
        self.outcome: Outcome = Outcome.STORED
        self.refusal: tuple[ErrorCode, str] | None = None
        self.winners_answer: tuple[str, ...] | WinnersWait = ("1", "2")
        self.admitted: list[int] = []
        self.admit_error: Exception | None = None
        self.epoch = 7  # the fencing token admit gives (a shared store's)
        self.epochs: list[int] = []  # the epoch each submitted batch carried
        self.left: list[int] = []
        self.done: list[int] = []

    class _Barrier:
        missing = (2,)
        missing_count = 1

        def first_missing(self, most: int) -> list[int]:
            return [2]

    barrier = _Barrier()
    random = False  # a fixed draw: the handler asks nothing of the random one
    draw_mode = "fixed"
    commitment = bytes(32)

    receipt_error: Exception | None = None

    async def receipt(self, agency: int) -> tuple[int, bytes] | None:
        if self.receipt_error is not None:
            raise self.receipt_error
        return None

    def refuse_bets(self, agency: int) -> tuple[ErrorCode, str] | None:
        return self.refusal

    async def admit(self, agency: int, speaker: Speaker) -> tuple[int, Progress]:
        if self.admit_error is not None:
            raise self.admit_error
        self.admitted.append(agency)
        return self.epoch, Progress(4, 40)

    def leave(self, agency: int, speaker: Speaker) -> None:
        self.left.append(agency)

    async def wait_for_room(self, bets: int = 1) -> None:
        return None

    today = "2024-06-01"

    def submit(
        self, agency: int, seq: int, records: Any, input_rows: int = 0, epoch: int = 0
    ) -> asyncio.Future[Any]:
        self.submitted.append((agency, seq, len(records)))
        self.epochs.append(epoch)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(self.outcome)
        return future

    async def agency_done(self, agency: int) -> None:
        self.done.append(agency)

    async def winners(
        self, agency: int, timeout: float, *, can_reveal: bool = True
    ) -> tuple[str, ...] | WinnersWait:
        return self.winners_answer

    def status(self) -> dict[str, Any]:
        return {"agencies": 2}


class Peer:
    """The agency side of one connection to a handler."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.protocol = ClientProtocol()

    def send(self, *messages: Message) -> None:
        self.writer.write(b"".join(encode(m) for m in messages))

    async def receive(self) -> Message | None:
        """The next reply, or None once the handler has closed the connection."""
        async with asyncio.timeout(REPLY_TIMEOUT):
            while (event := self.protocol.next_event()) is None:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.protocol.receive_data(data)
        return event


@asynccontextmanager
async def handler_for(fake: FakeRound) -> AsyncIterator[Peer]:
    """A real loopback connection whose server side is one `Handler` over ``fake``."""

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        config = ServerConfig(agencies=2)
        await Handler(fake, config, None, reader, writer).run()  # type: ignore[arg-type]

    listener = await asyncio.start_server(accept, LOOPBACK, 0)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        yield Peer(reader, writer)
    finally:
        writer.close()
        listener.close()
        await asyncio.wait_for(listener.wait_closed(), REPLY_TIMEOUT)


async def test_a_handshake_then_a_batch_goes_through_the_round() -> None:
    """HELLO is admitted by the round (WELCOME gives its progress); a batch is submitted, acked."""
    fake = FakeRound()
    async with handler_for(fake) as peer:
        peer.send(Hello(1))
        assert await peer.receive() == Welcome(4, 40, today="2024-06-01")
        peer.send(Batch(5, make_rows(3)))  # type: ignore[arg-type]
        assert await peer.receive() == Ack(5)
    assert fake.admitted == [1]
    assert fake.submitted == [(1, 5, 3)]
    assert fake.epochs == [7]  # the batch carries the connection's epoch (store guarantee 7)
    assert fake.stats.ack_latencies.count == 1


async def test_a_stale_batch_is_refused_retryably_and_the_connection_ends() -> None:
    """A batch the store finds STALE (the agency was admitted again) gets STORAGE, then EOF."""
    fake = FakeRound()
    fake.outcome = Outcome.STALE
    async with handler_for(fake) as peer:
        peer.send(Hello(1))
        assert await peer.receive() == Welcome(4, 40, today="2024-06-01")
        peer.send(Batch(5, make_rows(1)))  # type: ignore[arg-type]
        reply = await peer.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.STORAGE
        assert "newer connection" in reply.message
        assert await peer.receive() is None
    assert fake.stats.batches_refused == 1


async def test_a_store_that_cannot_admit_gets_a_retryable_refusal() -> None:
    """A handshake the store cannot admit (shared store down) gets STORAGE and the line ends."""
    fake = FakeRound()
    fake.admit_error = StoreError("the store is unreachable")
    async with handler_for(fake) as peer:
        peer.send(Hello(1))
        reply = await peer.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.STORAGE
        assert await peer.receive() is None
    assert fake.admitted == []


async def test_a_receipt_the_store_cannot_read_is_a_retryable_refusal() -> None:
    """Winners whose receipt the store cannot read (shared store down): STORAGE, line kept."""
    fake = FakeRound()
    fake.receipt_error = StoreError("the store is unreachable")
    async with handler_for(fake) as peer:
        peer.send(Hello(1))
        assert await peer.receive() == Welcome(4, 40, today="2024-06-01")
        peer.send(DrawQuery())
        assert isinstance(await peer.receive(), DrawInfo)
        peer.send(WinnersQuery())
        reply = await peer.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.STORAGE
        fake.receipt_error = None
        peer.send(WinnersQuery())
        assert await peer.receive() == Winners(("1", "2"))


async def test_replies_come_in_request_order() -> None:
    """Pipelined requests of every kind are answered in the order they came in."""
    fake = FakeRound()
    async with handler_for(fake) as peer:
        peer.send(Hello(1))
        assert await peer.receive() == Welcome(4, 40, today="2024-06-01")
        peer.send(StatusQuery(), Batch(1, make_rows(1)), Done(), WinnersQuery())  # type: ignore[arg-type]
        assert await peer.receive() == Status('{"agencies": 2}')
        assert await peer.receive() == Ack(1)
        assert await peer.receive() == Ack(0)
        assert await peer.receive() == Winners(("1", "2"))
    assert fake.done == [1]


async def test_a_bet_the_round_refuses_closes_the_connection() -> None:
    """When the round refuses bets (the draw is made), the handler answers DRAW_MADE and closes."""
    fake = FakeRound()
    fake.refusal = (ErrorCode.DRAW_MADE, "the draw is made")
    async with handler_for(fake) as peer:
        peer.send(Hello(1))
        assert await peer.receive() == Welcome(4, 40, today="2024-06-01")
        peer.send(Batch(1, make_rows(1)))  # type: ignore[arg-type]
        reply = await peer.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.DRAW_MADE
        assert await peer.receive() is None
    assert fake.submitted == []


async def test_a_gap_is_refused_and_the_connection_goes_on() -> None:
    """A batch the store finds out of sequence gets BAD_SEQUENCE; the next request is answered."""
    fake = FakeRound()
    fake.outcome = Outcome.GAP
    fake.winners_answer = WinnersWait.NOT_READY
    async with handler_for(fake) as peer:
        peer.send(Hello(1))
        assert await peer.receive() == Welcome(4, 40, today="2024-06-01")
        peer.send(Batch(9, make_rows(1)), WinnersQuery())  # type: ignore[arg-type]
        reply = await peer.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_SEQUENCE
        assert await peer.receive() == NotReady(1, (2,))
    assert fake.stats.batches_refused == 1


async def test_an_unknown_agency_is_refused_and_never_admitted() -> None:
    """A HELLO for an agency outside 1..N gets UNKNOWN_AGENCY and the connection closes."""
    fake = FakeRound()
    async with handler_for(fake) as peer:
        peer.send(Hello(3), Batch(1, make_rows(1)))  # type: ignore[arg-type]
        reply = await peer.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.UNKNOWN_AGENCY
        assert await peer.receive() is None
    assert fake.admitted == [] and fake.submitted == []
