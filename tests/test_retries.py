"""Every retry loop of the agency is bounded, waits between tries, and ends in a clear error."""

from __future__ import annotations

import asyncio
import datetime
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from lottery import backoff
from lottery.backoff import MAX_BACKOFF, Retry, exponential_backoff
from lottery.client import AsyncAgency
from lottery.errors import AgencyError, ConnectionLost
from lottery.protocol import DrawInfo, DrawQuery, Hello, ServerProtocol, Welcome

from .conftest import UNIT
from .helpers import LOOPBACK, REPLY_TIMEOUT, make_rows, write_agency_file

pytestmark = pytest.mark.timeout(60)

ATTEMPTS = 3

TODAY = datetime.date.today().isoformat()


class DroppingServer:
    """A server on 127.0.0.1 port 0 that keeps dropping the line; counts handshakes."""

    def __init__(self, answer_hello: bool) -> None:
        self.answer_hello = answer_hello
        self.connections = 0
        self.handshakes = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Close at once, or answer HELLO (and DRAW_QUERY) and close on the next request."""
        self.connections += 1
        try:
            if self.answer_hello:
                protocol = ServerProtocol()
                while data := await reader.read(65536):
                    protocol.receive_data(data)
                    message = protocol.next_event(TODAY)
                    if isinstance(message, Hello):
                        self.handshakes += 1
                        writer.write(protocol.send(Welcome(0, 0)))
                        await writer.drain()
                    elif isinstance(message, DrawQuery):  # the rest of a draw-aware handshake
                        writer.write(protocol.send(DrawInfo("fixed")))
                        await writer.drain()
                    elif message is not None:
                        break  # a request after the handshake: drop the line unanswered
        finally:
            writer.close()


@asynccontextmanager
async def dropping_server(answer_hello: bool) -> AsyncIterator[tuple[DroppingServer, int]]:
    """Run a `DroppingServer`; yields it and its port, and always shuts it down."""
    state = DroppingServer(answer_hello)
    server = await asyncio.start_server(state.handle, LOOPBACK, 0)
    try:
        yield state, int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every back-off wait instead of sleeping it (the clock is never read)."""
    recorded: list[float] = []

    async def sleep(delay: float) -> None:
        recorded.append(delay)
        await asyncio.sleep(0)

    monkeypatch.setattr(backoff, "sleep", sleep)
    return recorded


def agency(port: int) -> AsyncAgency:
    """An agency with test-sized timeouts and ``ATTEMPTS`` tries."""
    return AsyncAgency(
        1, LOOPBACK, port, timeout=REPLY_TIMEOUT, winners_timeout=REPLY_TIMEOUT,
        reconnect_attempts=ATTEMPTS, reconnect_base_delay=0.01, winners_base_delay=0.01,
    )  # fmt: skip


Operation = Callable[[AsyncAgency], Awaitable[object]]
OPERATIONS: dict[str, Operation] = {
    "send_bets": lambda client: client.send_bets(make_rows(5)),
    "send_bet": lambda client: client.send_bet(make_rows(1)[0]),
    "notify": lambda client: client.notify(),
    "winners": lambda client: client.winners(),
}


def assert_backed_off(waits: list[float]) -> None:
    """One wait between each two of the ``ATTEMPTS`` tries, each within its jittered ceiling."""
    assert len(waits) == ATTEMPTS - 1
    assert all(0 <= wait <= min(MAX_BACKOFF, 0.01 * 2**n) for n, wait in enumerate(waits))


async def test_connect_gives_up_on_a_server_that_closes_at_once(waits: list[float]) -> None:
    """connect() against a server that closes before WELCOME makes ATTEMPTS tries, then raises."""
    async with dropping_server(answer_hello=False) as (server, port):
        client = agency(port)
        with pytest.raises(ConnectionLost, match=f"after {ATTEMPTS} attempts"):
            await client.connect()
        await client.aclose()
    assert server.connections == ATTEMPTS
    assert_backed_off(waits)


@pytest.mark.parametrize("name", list(OPERATIONS))
async def test_each_loop_gives_up_on_a_server_that_drops_every_request(
    name: str, waits: list[float]
) -> None:
    """Against a server that shakes hands and drops each request, the loop makes ATTEMPTS tries."""
    async with dropping_server(answer_hello=True) as (server, port), agency(port) as client:
        with pytest.raises(ConnectionLost, match=f"{ATTEMPTS} times in a row") as lost:
            await OPERATIONS[name](client)
    assert server.handshakes == ATTEMPTS
    assert isinstance(lost.value, AgencyError)
    assert_backed_off(waits)


@pytest.mark.parametrize("name", list(OPERATIONS))
async def test_each_loop_gives_up_on_a_server_that_closes_at_once(
    name: str, waits: list[float]
) -> None:
    """Without a prior connection, every operation's first connect is bounded the same way."""
    async with dropping_server(answer_hello=False) as (server, port):
        with pytest.raises(ConnectionLost, match=f"after {ATTEMPTS} attempts"):
            await OPERATIONS[name](agency(port))
    assert server.connections == ATTEMPTS
    assert_backed_off(waits)


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    """The n-th wait lies in [0, min(cap, base·2ⁿ)], and a floor keeps it above its share."""
    delays = exponential_backoff(0.5, cap=3.0)
    for n in range(12):
        assert 0 <= next(delays) <= min(3.0, 0.5 * 2**n)
    floored = exponential_backoff(1.0, cap=2.0, floor=0.5)
    assert [0.5 <= next(floored) <= 1.0, 1.0 <= next(floored) <= 2.0] == [True, True]
    assert all(1.0 <= next(floored) <= 2.0 for _ in range(10))


def test_a_retry_counts_fruitless_tries_and_starts_over_on_progress() -> None:
    """failed() allows attempts-1 more tries; reset() after progress starts the count again."""
    retry = Retry(3, 0.1)
    assert [retry.failed(), retry.failed()] == [True, True]
    retry.reset()
    assert [retry.failed(), retry.failed(), retry.failed()] == [True, True, False]
    assert repr(retry) == "<Retry 3/3 failed>"


@pytest.mark.e2e
async def test_lottery_agency_exits_1_when_the_server_keeps_dropping(tmp_path: Path) -> None:
    """`lottery agency` against a server that drops every request says why and exits 1."""
    bets = write_agency_file(tmp_path / "agency-1.csv", make_rows(5))
    async with dropping_server(answer_hello=True) as (server, port):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lottery", "agency", "--id", "1", "--server",
            f"{LOOPBACK}:{port}", "--bets", str(bets), "--reconnect-attempts", str(ATTEMPTS),
            "--timeout", str(REPLY_TIMEOUT), "--quiet",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        async with asyncio.timeout(30 * UNIT):
            output, _ = await process.communicate()
    assert process.returncode == 1, output
    assert f"{ATTEMPTS} times in a row" in output.decode()
    assert server.handshakes == ATTEMPTS
