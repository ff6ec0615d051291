"""An agency given a list of servers moves on when one does not answer, and loses nothing.

The first server of each list is a fault (a closed port, a listener that never
answers, one that drops the line after the handshake, a proxy that goes away);
the next is a real `lottery` server with its SQLite store. Two real SQLite
servers would be two rounds, so no test here moves between two live stores:
the shared PostgreSQL store's tests do that.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from lottery import backoff
from lottery.backoff import Retry
from lottery.cli import main
from lottery.client import AsyncAgency
from lottery.config import load_agency_config, parse_addresses
from lottery.errors import ConfigError, ConnectionLost
from lottery.protocol import Batch, Hello, ServerProtocol, Welcome
from roundrunner import (
    export_bets,
    input_bets,
    start_agency,
    start_server,
    stop_server,
    wait_agencies,
)

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
from .test_retries import dropping_server

pytestmark = pytest.mark.timeout(60 * UNIT)

Row = tuple[str, str, str, str, str]
#: Bets of the one agency of each round, three of them winners.
ROWS = make_rows(300, winners=[0, 150, 299])
WINNERS = [ROWS[0][2], ROWS[150][2], ROWS[299][2]]
TODAY = datetime.date.today().isoformat()
#: How long the agency waits for a reply here: short, for the silent server.
TIMEOUT = 0.5 * UNIT


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A listener that accepts and never answers; yields its port."""

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass

    async with fake_server(never_answer) as port:
        yield port


@asynccontextmanager
async def stalling_server() -> AsyncIterator[tuple[list[int], int]]:
    """Answers HELLO with WELCOME, then reads batches and never acknowledges one.

    Yields the bets it was sent (one count per batch) and its port.
    """
    batches: list[int] = []

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocol = ServerProtocol()
        while data := await reader.read(65536):
            protocol.receive_data(data)
            while (message := protocol.next_event(TODAY)) is not None:
                if isinstance(message, Hello):
                    writer.write(protocol.send(Welcome(0, 0)))
                elif isinstance(message, Batch):
                    batches.append(len(message.records))

    async with fake_server(stall) as port:
        yield batches, port


def agency(servers: list[tuple[str, int]], **options: object) -> AsyncAgency:
    """Agency 1 of a one-agency round, with test-sized timeouts and back-offs."""
    settings: dict[str, object] = {
        "timeout": TIMEOUT,
        "winners_timeout": REPLY_TIMEOUT,
        "winners_base_delay": 0.01 * UNIT,
        "reconnect_base_delay": 0.01 * UNIT,
        "reconnect_attempts": 3,
        "batch_max_amount": 20,
        "max_in_flight": 4,
    }
    settings.update(options)
    return AsyncAgency(1, servers=servers, **settings)  # type: ignore[arg-type]


async def run_round(servers: list[tuple[str, int]]) -> list[str]:
    """Agency 1's whole round (``ROWS``) over ``servers``; returns its winners."""
    async with agency(servers) as client:
        result = await client.run(ROWS)
    assert result.report.acknowledged == len(ROWS)
    return result.winners


def assert_stored_once(tmp_path: Path) -> None:
    """The (stopped) server stored every bet of ``ROWS`` once, in order."""
    assert stored_bets(data_dir_of(tmp_path)) == [(1, *r[:4], int(r[4])) for r in ROWS]


def moves(log_stream: io.StringIO) -> list[tuple[str, str]]:
    """(from, to) of every ``action: cambio_servidor`` line."""
    events = log_events(log_stream, "cambio_servidor", result="in_progress")
    return [(e["desde"], e["hacia"]) for e in events]


# -- the retry count in rounds ------------------------------------------------------------


def test_a_retry_over_several_servers_counts_whole_rounds() -> None:
    """With a cycle of 3, only every third fruitless try ends a round and counts one failure."""
    retry = Retry(2, 0.1, cycle=3)
    first = [(retry.failed(), retry.round_over) for _ in range(3)]
    assert first == [(True, False), (True, False), (True, True)]
    assert retry.failures == 1
    assert [retry.failed(), retry.failed(), retry.failed()] == [True, True, False]
    retry.reset()
    assert (retry.failures, retry.tries) == (0, 0)


def test_an_empty_server_list_is_refused() -> None:
    """servers=[] is a mistake, not a wish for the default server."""
    with pytest.raises(ValueError, match="at least one server"):
        AsyncAgency(1, servers=[])


def test_host_and_port_still_name_one_server() -> None:
    """AsyncAgency(id, host, port) is a list of one, and says which server it uses."""
    client = AsyncAgency(1, "example.org", 4000)
    assert (client.host, client.port, client.servers) == (
        "example.org",
        4000,
        [("example.org", 4000)],
    )
    assert "example.org:4000" in repr(client)


# -- the address list -----------------------------------------------------------------------


def test_an_address_list_parses_in_order() -> None:
    """HOST:PORT,HOST:PORT gives (host, port) pairs in the order given; spaces are dropped."""
    assert parse_addresses("a:1, b:2,[::1]:3") == [("a", 1), ("b", 2), ("::1", 3)]
    assert parse_addresses("a:1") == [("a", 1)]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("a:1,b", "server 2 of 2 in 'a:1,b': 'b' is not HOST:PORT"),
        ("a:1,,b:2", "server 2 of 3 in 'a:1,,b:2': is empty"),
        ("a:1,b:70000", "server 2 of 2 in 'a:1,b:70000': 70000 must be from 1 to 65535"),
    ],
)
def test_a_bad_entry_is_named_in_one_line(raw: str, message: str) -> None:
    """A bad entry of the list is named by its place, from the source that gave it."""
    with pytest.raises(ConfigError) as error:
        load_agency_config({}, {"CLI_ID": "1", "CLI_SERVER_ADDRESS": raw})
    assert str(error.value) == f"environment variable CLI_SERVER_ADDRESS: {message}"


def test_every_source_takes_a_list(tmp_path: Path) -> None:
    """--server, CLI_SERVER_ADDRESS and config.yaml server.address (text or a list) take a list."""
    flags = load_agency_config({"id": 1, "server_address": "a:1,b:2"}, {})
    env = load_agency_config({}, {"CLI_ID": "1", "CLI_SERVER_ADDRESS": "a:1, b:2"})
    text = tmp_path / "text.yaml"
    text.write_text("id: 1\nserver:\n  address: a:1,b:2\n")
    listed = tmp_path / "list.yaml"
    listed.write_text("id: 1\nserver:\n  address: [a:1, b:2]\n")
    configs = [
        flags,
        env,
        load_agency_config({}, {}, str(text)),
        load_agency_config({}, {}, str(listed)),
    ]
    assert [c.servers for c in configs] == [[("a", 1), ("b", 2)]] * 4


# -- failing over -------------------------------------------------------------------------------


async def test_a_closed_port_first_moves_to_the_next_server(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """The first server refuses connections: the agency moves on, stores everything once."""
    down = closed_port()
    async with running_server(tmp_path, agencies=1) as server:
        up = server.port
        winners = await run_round([(LOOPBACK, down), (LOOPBACK, up)])
    assert winners == WINNERS
    assert_stored_once(tmp_path)
    assert moves(log_stream) == [(f"{LOOPBACK}:{down}", f"{LOOPBACK}:{up}")]


async def test_a_server_that_never_answers_is_left_after_the_timeout(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """A listener that accepts and stays silent costs one handshake timeout, then the next."""
    async with silent_server() as silent, running_server(tmp_path, agencies=1) as server:
        up = server.port
        winners = await run_round([(LOOPBACK, silent), (LOOPBACK, up)])
    assert winners == WINNERS
    assert_stored_once(tmp_path)
    assert moves(log_stream) == [(f"{LOOPBACK}:{silent}", f"{LOOPBACK}:{up}")]


async def test_a_server_that_drops_after_the_handshake_is_left_mid_send(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """Batches lost with the first server's line are sent again to the next, stored once."""
    async with (
        dropping_server(answer_hello=True) as (dropping, drop_port),
        running_server(tmp_path, agencies=1) as server,
    ):
        up = server.port
        winners = await run_round([(LOOPBACK, drop_port), (LOOPBACK, up)])
    assert dropping.handshakes == 1  # its WELCOME was taken, its line lost with batches on it
    assert winners == WINNERS
    assert_stored_once(tmp_path)
    assert moves(log_stream) == [(f"{LOOPBACK}:{drop_port}", f"{LOOPBACK}:{up}")]


async def test_a_server_that_stops_acknowledging_is_left_after_the_ack_timeout(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """Batches that wait past the timeout for their ack are sent to the next server, once."""
    async with (
        stalling_server() as (batches, stalled),
        running_server(tmp_path, agencies=1) as server,
    ):
        up = server.port
        winners = await run_round([(LOOPBACK, stalled), (LOOPBACK, up)])
    assert batches, "the stalled server was sent no batch"
    assert winners == WINNERS
    assert_stored_once(tmp_path)
    assert moves(log_stream) == [(f"{LOOPBACK}:{stalled}", f"{LOOPBACK}:{up}")]


async def test_the_winners_query_fails_over(tmp_path: Path, log_stream: io.StringIO) -> None:
    """Bets and DONE go through one address; it goes away; the winners come from the next.

    Both addresses lead to one server (the first through a proxy), so this is
    a move mid-round within one round, with its bets already stored.
    """
    async with running_server(tmp_path, agencies=1, timeout_winners=REPLY_TIMEOUT) as server:
        up = server.port
        proxy = CuttableProxy(up)
        async with proxy:
            via = proxy.port
            client = agency([(LOOPBACK, via), (LOOPBACK, up)])
            await client.connect()
            report = await client.send_bets(ROWS)
            await client.notify()
        # The proxy is gone, and with it the agency's line: the query moves on.
        try:
            assert await client.winners() == WINNERS
        finally:
            await client.aclose()
    assert report.acknowledged == len(ROWS)
    assert_stored_once(tmp_path)
    assert moves(log_stream) == [(f"{LOOPBACK}:{via}", f"{LOOPBACK}:{up}")]


async def test_every_server_down_waits_once_a_round_and_gives_up(
    monkeypatch: pytest.MonkeyPatch, log_stream: io.StringIO
) -> None:
    """Three dead servers, 3 attempts: 9 tries in turn, a back-off wait after rounds 1 and 2."""
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr(backoff, "sleep", sleep)
    servers = [(LOOPBACK, closed_port()) for _ in range(3)]
    client = agency(servers)
    with pytest.raises(ConnectionLost, match=r"cannot reach every server \(.*\) after 3 attempts"):
        await client.connect()
    await client.aclose()
    assert len(waits) == 2
    names = [f"{host}:{port}" for host, port in servers]
    in_turn = [(names[n % 3], names[(n + 1) % 3]) for n in range(8)]  # none after the last try
    assert moves(log_stream) == in_turn


async def test_one_server_is_retried_as_before_with_no_move_logged(
    monkeypatch: pytest.MonkeyPatch, log_stream: io.StringIO
) -> None:
    """A list of one: every fruitless try is a round, waits before the next, and logs no move."""
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr(backoff, "sleep", sleep)
    async with dropping_server(answer_hello=False) as (dropping, port):
        client = agency([(LOOPBACK, port)])
        with pytest.raises(
            ConnectionLost, match=f"cannot reach {LOOPBACK}:{port} after 3 attempts"
        ):
            await client.connect()
        await client.aclose()
    assert (dropping.connections, len(waits)) == (3, 2)
    assert moves(log_stream) == []


async def test_an_unresolvable_name_in_a_list_is_skipped(tmp_path: Path) -> None:
    """A host name that does not resolve (a stopped container's) is one more server down."""
    async with running_server(tmp_path, agencies=1) as server:
        winners = await run_round([("no-such-host.invalid", 12345), (LOOPBACK, server.port)])
    assert winners == WINNERS
    assert_stored_once(tmp_path)


# -- status and ping ----------------------------------------------------------------------------
# main() runs its own event loop, so it runs in a thread while the server runs in the test's.


async def test_ping_and_status_use_the_first_server_that_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_stream: io.StringIO
) -> None:
    """`lottery ping` and `status` given DOWN,UP skip the closed port and ask the next."""
    timeout = ["--timeout", str(REPLY_TIMEOUT)]
    async with running_server(tmp_path, agencies=1) as server:
        up = f"{LOOPBACK}:{server.port}"
        listed = f"{LOOPBACK}:{closed_port()},{up}"
        pinged = await asyncio.to_thread(main, ["ping", listed, *timeout])
        ping_out = capsys.readouterr().out
        asked = await asyncio.to_thread(main, ["status", "--server", listed, "--json", *timeout])
    assert (pinged, asked) == (0, 0)
    assert ping_out.startswith(f"lottery ping: {up} answers; ")
    assert json.loads(capsys.readouterr().out)["agencies"] == 1


async def test_ping_of_a_list_with_nobody_up_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """When no server of the list answers, ping says so for the whole list and exits 1."""
    listed = f"{LOOPBACK}:{closed_port()},{LOOPBACK}:{closed_port()}"
    assert await asyncio.to_thread(main, ["ping", listed, "--timeout", "1"]) == 1
    assert capsys.readouterr().out.startswith(f"lottery ping: {listed} did not answer")


def test_status_with_a_bad_entry_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad entry in status's --server list is a usage error naming the flag and the entry."""
    assert main(["status", "--server", "a:1,nowhere"]) == 2
    assert capsys.readouterr().err == (
        "lottery status: --server: server 2 of 2 in 'a:1,nowhere': 'nowhere' is not HOST:PORT\n"
    )


# -- a real agency process ------------------------------------------------------------------


@pytest.mark.e2e
def test_lottery_agency_given_a_list_whose_first_server_is_down(tmp_path: Path) -> None:
    """`lottery agency --server DOWN,UP` logs the move once, completes, and stores each bet once."""
    bets = write_agency_file(tmp_path / "agency-1.csv", ROWS)
    server = start_server(tmp_path / "data", 1)
    try:
        down = closed_port()
        listed = f"{LOOPBACK}:{down},{LOOPBACK}:{server.port}"
        process = start_agency(1, server.port, bets, extra_args=["--server", listed, "--quiet"])
        wait_agencies([process], timeout=60 * UNIT)
    finally:
        status = stop_server(server)
    assert process.returncode == 0, process.output[-3000:]
    assert status == 0, server.log()[-3000:]
    assert process.winners == WINNERS
    move = (
        f"action: cambio_servidor | result: in_progress | desde: {LOOPBACK}:{down} "
        f"| hacia: {LOOPBACK}:{server.port}"
    )
    assert process.output.count(move) == 1, process.output[-3000:]
    exported = export_bets(tmp_path / "data", tmp_path / "bets.csv", timeout=60 * UNIT)
    assert exported == input_bets([bets])
