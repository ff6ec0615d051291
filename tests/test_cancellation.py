"""Cancelling `AsyncAgency` calls mid-way closes the connection and leaves nothing behind."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from lottery.client import AsyncAgency
from lottery.protocol import (
    Ack,
    Batch,
    Done,
    Hello,
    ServerProtocol,
    Welcome,
    WinnersQuery,
    encode,
)

from .helpers import LOOPBACK, REPLY_TIMEOUT, make_rows

pytestmark = pytest.mark.timeout(60)

TODAY = datetime.date.today().isoformat()


class HoldingServer:
    """Answers HELLO and DONE, but holds batches and winners queries unanswered."""

    def __init__(self) -> None:
        self.handlers: set[asyncio.Task[object]] = set()
        self.held = asyncio.Event()  # a request is being held
        self.closed = asyncio.Event()  # the first connection was closed by the agency
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection until the agency closes it."""
        self.handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        self.connections += 1
        first = self.connections == 1
        protocol = ServerProtocol()
        try:
            while data := await reader.read(65536):
                protocol.receive_data(data)
                while (message := protocol.next_event(TODAY)) is not None:
                    if isinstance(message, Hello):
                        writer.write(protocol.send(Welcome(0, 0)))
                    elif isinstance(message, Done):
                        writer.write(encode(Ack(0)))
                    elif isinstance(message, Batch | WinnersQuery):
                        self.held.set()
            if first:
                self.closed.set()
        finally:
            writer.close()


@asynccontextmanager
async def holding_server() -> AsyncIterator[tuple[HoldingServer, int]]:
    """Run a `HoldingServer` on 127.0.0.1 port 0; always shut down."""
    state = HoldingServer()
    server = await asyncio.start_server(state.handle, LOOPBACK, 0)
    try:
        yield state, int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in state.handlers:
            task.cancel()
        await server.wait_closed()


CALLS: dict[str, Callable[[AsyncAgency], Awaitable[object]]] = {
    "send_bets": lambda client: client.send_bets(make_rows(50)),
    "winners": lambda client: client.winners(),
}


@pytest.mark.parametrize("name", list(CALLS))
async def test_cancelling_a_call_closes_the_line_and_leaves_no_task(name: str) -> None:
    """Cancelled while its request is held: the line closes, no task is left, the agency works."""
    async with holding_server() as (server, port):
        client = AsyncAgency(
            1, LOOPBACK, port, timeout=REPLY_TIMEOUT, winners_timeout=REPLY_TIMEOUT,
            batch_max_amount=10,
        )  # fmt: skip
        await client.connect()
        before = asyncio.all_tasks()
        call = asyncio.create_task(CALLS[name](client))
        async with asyncio.timeout(REPLY_TIMEOUT):
            await server.held.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        async with asyncio.timeout(REPLY_TIMEOUT):
            await server.closed.wait()  # the agency closed the held connection
        assert asyncio.all_tasks() - before - {call} - server.handlers == set()
        assert "closed" in repr(client)
        await client.notify()  # a later call reconnects and works
        assert server.connections == 2
        await client.aclose()
        await client.aclose()


async def test_aclose_finishes_its_cleanup_when_cancelled() -> None:
    """aclose() cancelled mid-way still closes the socket, then re-raises the cancellation."""
    async with holding_server() as (server, port):
        client = AsyncAgency(1, LOOPBACK, port, timeout=REPLY_TIMEOUT)
        await client.connect()
        closing = asyncio.create_task(client.aclose())
        await asyncio.sleep(0)  # let aclose start and reach its first await
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        async with asyncio.timeout(REPLY_TIMEOUT):
            await server.closed.wait()
        assert "closed" in repr(client)
