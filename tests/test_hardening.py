"""A stranger on the network cannot starve the agencies (issue 9).

One test (at least) per item: connection slots and the per-address cap, the
cost of STATUS, the hard handshake deadline, two HELLOs racing a commit, the
open-file limit, and TLS handshakes held against the limit.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from lottery.auth import load_operator_token, load_secrets, make_secrets
from lottery.client import AsyncAgency, query_status, tls_context
from lottery.config import ServerConfig
from lottery.errors import ServerRefused
from lottery.protocol import (
    Ack,
    Auth,
    Batch,
    Challenge,
    Error,
    ErrorCode,
    Hello,
    Status,
    StatusQuery,
    Welcome,
    WinnersQuery,
    auth_mac,
    encode,
    operator_proof,
)
from lottery.ratelimit import StatusSnapshots, TokenBucket
from lottery.store import Outcome, PendingBatch, SQLiteStore
from roundrunner import log_events, lottery_command, start_server, stop_server

from .conftest import UNIT
from .helpers import (
    LOOPBACK,
    REPLY_TIMEOUT,
    RawConnection,
    data_dir_of,
    make_rows,
    open_files,
    running_server,
    stored_bets,
)

pytestmark = pytest.mark.timeout(120 * UNIT)

#: The attacker's address: another host, as far as the server can tell.
STRANGER = "127.0.0.2"


async def stranger_connection(port: int, rcvbuf: int = 0) -> tuple[Any, Any]:
    """A connection to ``port`` from `STRANGER` (with a tiny receive buffer, if asked)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((STRANGER, 0))
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(REPLY_TIMEOUT):
            await loop.sock_connect(sock, (LOOPBACK, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def until(condition: Callable[[], bool], timeout: float = REPLY_TIMEOUT) -> None:
    """Wait until ``condition()`` holds (server counters have no event to await)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for 1,100 attacking sockets at both ends; the old limit is restored after."""
    with open_files(4096):
        yield


class Crowd:
    """Connections from `STRANGER`, silent or dripping a byte a second, reopened when closed."""

    def __init__(self, port: int, size: int) -> None:
        self.port, self.size = port, size
        self.refused = 0
        self.opened = 0
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Crowd:
        self._tasks = [asyncio.create_task(self._one(i)) for i in range(self.size)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # A flag as well as cancel(): Python 3.11's wait_for can swallow a cancel.
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _one(self, i: int) -> None:
        for _ in range(1000):  # bounded: the test ends long before
            if self._stopping:
                return
            try:
                reader, writer = await stranger_connection(self.port)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            self.opened += 1
            try:
                while not self._stopping:
                    if i % 2:  # a dripper: one byte of a HELLO a second
                        writer.write(b"\x00")
                    data = await asyncio.wait_for(reader.read(4096), 1.0 * UNIT)
                    if not data:
                        break
                    self.refused += 1
            except (OSError, TimeoutError):
                pass
            finally:
                writer.transport.abort()


async def secret_round(port: int, secrets_file: Path, agencies: int) -> list[list[str]]:
    """Each agency sends 20 bets (one winner), says done, and gets its winners."""
    keys = load_secrets(secrets_file, agencies)

    async def one(agency: int) -> list[str]:
        rows = make_rows(20, start=agency * 1000, winners=[0])
        async with AsyncAgency(
            agency, LOOPBACK, port, secret=keys[agency], timeout=REPLY_TIMEOUT
        ) as client:
            return (await client.run(rows)).winners

    async with asyncio.timeout(60 * UNIT):
        return list(await asyncio.gather(*(one(a) for a in range(1, agencies + 1))))


# -- 1. connection slots ------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_round_with_secrets_completes_while_one_address_holds_1100_connections(
    tmp_path: Path, many_files: None
) -> None:
    """1,100 silent or dripping connections from one address cannot keep 5 agencies out."""
    secrets_file = tmp_path / "secrets"
    make_secrets(5, secrets_file)
    async with running_server(
        tmp_path, agencies=5, secrets_file=str(secrets_file), timeout_handshake=3 * UNIT,
        listen_backlog=4096,  # the crowd connects at once, not after SYN retries
    ) as server:  # fmt: skip
        async with Crowd(server.port, 1100) as crowd:
            # The crowd has filled its pool.
            await until(
                lambda: server.admission.waiting >= server.admission.unauthenticated, 30 * UNIT
            )
            winners = await secret_round(server.port, secrets_file, 5)
            assert crowd.refused > 0, "the address over its cap was never refused"
        assert [len(w) for w in winners] == [1] * 5
        assert len(stored_bets(data_dir_of(tmp_path))) == 100


async def test_an_address_over_its_cap_is_refused_once_the_pool_is_full(tmp_path: Path) -> None:
    """With the pool full, an address over its cap reads TOO_MANY_CONNECTIONS at once."""
    async with running_server(tmp_path, limit_unauthenticated=4, limit_per_address=2) as server:
        held = [await stranger_connection(server.port) for _ in range(4)]
        try:
            reader, writer = await stranger_connection(server.port)
            conn = RawConnection(reader, writer)
            reply = await conn.receive()
            assert isinstance(reply, Error) and reply.code == ErrorCode.TOO_MANY_CONNECTIONS
            assert STRANGER in reply.message
            await conn.close()
            # Another address still gets in: the stranger's oldest gives way.
            local = await RawConnection.open(server.port)
            await local.send(StatusQuery())
            assert isinstance(await local.receive(), Status)
            await local.close()
            assert server.admission.evicted == 1
        finally:
            for _, w in held:
                w.transport.abort()


async def test_hello_then_winners_queries_then_close_frees_the_slot_at_once(
    tmp_path: Path,
) -> None:
    """HELLO, 64 WINNERS_QUERY, close: the server stops waiting for the draw and frees the slot."""
    async with running_server(tmp_path, timeout_winners=30) as server:
        for _ in range(5):
            conn = await RawConnection.open(server.port)
            await conn.hello(1)
            await conn.send(*[WinnersQuery()] * 64)
            conn.writer.transport.abort()
        await until(lambda: not server.connections)  # well before timeout_winners
        assert server.admission.open == 0


# -- 2. STATUS --------------------------------------------------------------------------------


async def test_status_costs_no_store_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hundred STATUS answers send nothing to the store's thread."""
    async with running_server(tmp_path) as server:
        calls = 0
        executor = server.store._executor
        submit = executor.submit

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return submit(*args, **kwargs)

        monkeypatch.setattr(executor, "submit", counting)
        conn = await RawConnection.open(server.port)
        for _ in range(100):
            await conn.send(StatusQuery())
            assert isinstance(await conn.receive(), Status)
        await conn.close()
        assert calls == 0


async def test_one_status_answer_in_flight_per_connection(tmp_path: Path) -> None:
    """A peer that pipelines STATUS queries and never reads has at most one answer queued."""
    async with running_server(tmp_path, agencies=3000, limit_status_rate=1000) as server:
        _, writer = await stranger_connection(server.port, rcvbuf=4096)
        writer.write(encode(StatusQuery()) * 5000)
        (handler,) = server._handlers
        for _ in range(50):  # let it answer what it will
            await asyncio.sleep(0.02)
            assert len(handler._replies) <= 1
            assert handler._unanswered <= 1
        writer.transport.abort()


def test_token_bucket_paces_at_its_rate() -> None:
    """A bucket of rate r and burst b gives b tokens at once, then one per 1/r seconds."""
    now = [0.0]
    bucket = TokenBucket(10, 2, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(2)] == [0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2)  # waiters queue up
    now[0] = 1.0
    assert bucket.reserve() == 0.0
    assert bucket.try_take() is True
    assert bucket.try_take() is False


def test_status_json_is_built_once_per_change_and_rate_limited() -> None:
    """The STATUS JSON is built once per round change, and a few times a second at most."""
    now = [0.0]
    version = [0]
    built: list[int] = []

    def status() -> dict[str, Any]:
        built.append(version[0])
        return {"agencies": 1, "opened": False, "drawn": False, "draw_seconds": None,
                "agency": [{"id": 1, "done": False}]}  # fmt: skip

    snapshots = StatusSnapshots(status, TokenBucket(1e9), lambda: version[0], lambda: now[0])
    for _ in range(1000):
        snapshots.text(full=True)
    assert len(built) == 1
    for i in range(1000):  # the round changes at every query, for one second
        version[0] += 1
        now[0] = i / 1000
        snapshots.text(full=False)
    assert len(built) <= 1 + 5 + 5  # the first, a burst of 5, then 5 a second
    assert json.loads(snapshots.text(full=False)) == {
        "agencies": 1, "agencies_done": 0, "opened": False, "drawn": False, "draw_seconds": None
    }  # fmt: skip


async def test_status_before_authentication_is_the_summary_only(tmp_path: Path) -> None:
    """With secrets, STATUS shows per-agency progress only to an agency or to the operator token."""
    secrets_file = tmp_path / "secrets"
    make_secrets(2, secrets_file)
    token = load_operator_token(secrets_file)
    assert token is not None
    async with running_server(tmp_path, secrets_file=str(secrets_file)) as server:
        stranger = await query_status(LOOPBACK, server.port, REPLY_TIMEOUT)
        assert stranger == {
            "agencies": 2, "agencies_done": 0, "opened": False, "drawn": False,
            "draw_seconds": None,
        }  # fmt: skip
        wrong = await query_status(LOOPBACK, server.port, REPLY_TIMEOUT, operator_token=b"x" * 32)
        assert "agency" not in wrong
        operator = await query_status(LOOPBACK, server.port, REPLY_TIMEOUT, operator_token=token)
        assert [a["id"] for a in operator["agency"]] == [1, 2]
        conn = await RawConnection.open(server.port)
        await conn.send(Hello(1))
        challenge = await conn.receive()
        assert isinstance(challenge, Challenge)
        secret = load_secrets(secrets_file, 2)[1]
        await conn.send(Auth(auth_mac(secret, 1, challenge.nonce)))
        assert isinstance(await conn.receive(), Welcome)
        await conn.send(StatusQuery())
        reply = await conn.receive()
        assert isinstance(reply, Status) and "agency" in json.loads(reply.text)
        await conn.close()
        # A token of the wrong size breaks the protocol.
        bad = await RawConnection.open(server.port)
        await bad.send(b"\x00\x00\x00\x03\x06abc")
        reply = await bad.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_FRAME
        await bad.close()
    assert operator_proof(token) != token


# -- 3. the handshake deadline ---------------------------------------------------------------


async def test_a_peer_that_pipelines_status_and_never_reads_is_closed_at_the_deadline(
    tmp_path: Path,
) -> None:
    """The handshake deadline closes a peer that pipelines STATUS and never reads."""
    deadline = 2.0 * UNIT
    async with running_server(
        tmp_path, agencies=3000, timeout_handshake=deadline, limit_status_rate=1000,
        limit_status_global_rate=1000,
    ) as server:  # fmt: skip
        loop = asyncio.get_running_loop()
        opened = loop.time()
        _, writer = await stranger_connection(server.port, rcvbuf=4096)
        writer.write(encode(StatusQuery()) * 5000)  # 25 KB of queries, 100 KB answers each
        await until(lambda: not server.admission.open, deadline + 10 * UNIT)
        closed_after = loop.time() - opened
        writer.transport.abort()
        print(f"closed after {closed_after:.2f} s (deadline {deadline:g} s)")
        assert deadline - 1 <= closed_after <= deadline + 1


# -- 6. two HELLOs racing a commit ------------------------------------------------------------


class HeldStore(SQLiteStore):
    """An SQLiteStore whose next commit waits for the test to let it through."""

    hold = threading.Event()
    entered = threading.Event()

    def commit(self, batches: Sequence[PendingBatch]) -> list[Outcome]:
        if not self.hold.is_set():
            self.entered.set()
            self.hold.wait(30)
        return super().commit(batches)


def _row(document: str) -> tuple[str, str, str, str, str]:
    return ("Ana", "Paz", document, "1990-01-01", "1")


async def test_two_hellos_racing_a_commit_admit_only_the_newer(tmp_path: Path) -> None:
    """While a batch commits, of two HELLOs only the newer is welcomed; every ack is stored."""
    HeldStore.hold.clear()
    HeldStore.entered.clear()

    def held_store(cfg: ServerConfig) -> HeldStore:
        return HeldStore(cfg.data_dir, cfg.agencies, cfg.winning_number, cfg.sync)

    try:
        async with running_server(tmp_path, open_store=held_store) as server:
            old = await RawConnection.open(server.port)
            await old.hello(1)
            await old.send(Batch(1, (_row("1"),)))
            await asyncio.to_thread(HeldStore.entered.wait, REPLY_TIMEOUT)
            first = await RawConnection.open(server.port)
            await first.send(Hello(1))
            second = await RawConnection.open(server.port)
            await second.send(Hello(1))
            await until(lambda: server.round._handshakes[1] == 3)  # both are being admitted
            HeldStore.hold.set()
            assert await old.receive() == Ack(1)
            refused = await first.receive()
            assert isinstance(refused, Error) and refused.code == ErrorCode.OUT_OF_ORDER
            welcome = await second.receive()
            assert isinstance(welcome, Welcome)
            assert (welcome.last_seq, welcome.committed_bets) == (1, 1)
            await second.send(Batch(2, (_row("3"),)))
            assert await second.receive() == Ack(2)
            for conn in (old, first, second):
                await conn.close()
    finally:
        HeldStore.hold.set()
    assert [bet[3] for bet in stored_bets(data_dir_of(tmp_path))] == ["1", "3"]


# -- 8. open files ----------------------------------------------------------------------------


@pytest.mark.e2e
def test_under_a_low_open_file_limit_the_excess_is_refused_out_loud(tmp_path: Path) -> None:
    """With 200 open files allowed, the server logs both and refuses past its limit with ERROR."""
    server = start_server(
        tmp_path / "data", 2, program=["prlimit", "--nofile=200:200", *lottery_command()],
        extra_args=["--limit-per-address", "1000"],
    )  # fmt: skip
    try:
        (config,) = log_events(server.log(), "config", result="success")
        assert config["nofile_soft"] == "200" and config["nofile_hard"] == "200"
        limit = int(config["limit_connections"])
        assert limit == 200 - 128

        async def crowd() -> list[object]:
            conns = [await RawConnection.open(server.port) for _ in range(limit + 20)]
            try:
                replies: list[object] = []
                for conn in conns[limit:]:
                    replies.append(await conn.receive())
                return replies
            finally:
                for conn in conns:
                    conn.writer.transport.abort()

        replies = asyncio.run(crowd())
        assert all(
            isinstance(r, Error) and r.code == ErrorCode.TOO_MANY_CONNECTIONS for r in replies
        ), replies
    finally:
        stop_server(server)


# -- 9. TLS handshakes count -----------------------------------------------------------------


@asynccontextmanager
async def tls_server(tmp_path: Path, cert: Path, key: Path, **config: Any) -> AsyncIterator[Any]:
    async with running_server(tmp_path, tls_cert=str(cert), tls_key=str(key), **config) as server:
        yield server


async def test_connections_in_the_tls_handshake_count_against_the_limit(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """Connections still in the TLS handshake hold slots: past the limit TLS clients are refused."""
    cert, key = certificate
    async with tls_server(tmp_path, cert, key, limit_connections=4, timeout_handshake=3) as server:
        held = [await asyncio.open_connection(LOOPBACK, server.port) for _ in range(4)]
        try:
            await until(lambda: server.admission.open == 4)
            with pytest.raises(ServerRefused) as refused:
                await query_status(LOOPBACK, server.port, REPLY_TIMEOUT, tls_context(str(cert)))
            assert refused.value.code == ErrorCode.TOO_MANY_CONNECTIONS
            # The handshake deadline covers the TLS handshake: they are closed.
            for reader, _ in held:
                async with asyncio.timeout(5 * UNIT):
                    assert await reader.read() == b""
            tls = tls_context(str(cert))
            status = await query_status(LOOPBACK, server.port, REPLY_TIMEOUT, tls)
            assert status["agencies"] == 2
        finally:
            for _, writer in held:
                writer.transport.abort()
    assert ssl.OPENSSL_VERSION


def _loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:  # the server runs on asyncio's loop then: one case is enough
        return factories
    return [*factories, pytest.param(uvloop.new_event_loop, id="uvloop")]


@pytest.mark.parametrize("loop_factory", _loop_factories())
def test_a_client_hello_sent_before_the_server_accepts_is_not_lost(
    tmp_path: Path, certificate: tuple[Path, Path], loop_factory: Callable[[], Any]
) -> None:
    """TLS bytes already waiting when the accept coroutine first runs still reach the handshake.

    The ClientHello is written on a blocking socket before the event loop
    runs again, so the server's transport can see data before `_accept` runs
    (what a loaded machine does at random; uvloop reads between the two
    steps). Read as plain bytes, the handshake would wait for it in vain.
    """
    cert, key = certificate

    async def handshake() -> str | None:
        async with tls_server(tmp_path, cert, key, timeout_handshake=5) as server:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = tls_context(str(cert)).wrap_bio(incoming, outgoing, server_hostname=LOOPBACK)
            sock = socket.create_connection((LOOPBACK, server.port), timeout=REPLY_TIMEOUT)
            try:
                with pytest.raises(ssl.SSLWantReadError):
                    tls.do_handshake()
                sock.sendall(outgoing.read())  # the ClientHello, before the loop runs again
                sock.setblocking(False)
                loop = asyncio.get_running_loop()
                async with asyncio.timeout(REPLY_TIMEOUT):
                    while True:
                        try:
                            tls.do_handshake()
                            return tls.version()
                        except ssl.SSLWantReadError:
                            await loop.sock_sendall(sock, outgoing.read())
                            data = await loop.sock_recv(sock, 65536)
                            assert data, "the server closed the connection in the handshake"
                            incoming.write(data)
            finally:
                sock.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(handshake()) is not None


@pytest.mark.e2e
def test_lottery_status_shows_every_agency_only_with_the_operator_token(tmp_path: Path) -> None:
    """``lottery status`` with secrets: a summary line; the table only with --token-file."""
    secrets_file = tmp_path / "secrets"
    make_secrets(2, secrets_file)
    server = start_server(tmp_path / "data", 2, extra_args=["--secrets", str(secrets_file)])
    try:
        address = f"127.0.0.1:{server.port}"

        def status(*args: str) -> str:
            done = subprocess.run(
                [*lottery_command(), "status", "--server", address, *args],
                capture_output=True, text=True, timeout=30 * UNIT, check=True,
            )  # fmt: skip
            return done.stdout

        summary = status()
        assert "draw: waiting for 2 of 2 agencies" in summary
        assert "committed bets" not in summary
        table = status("--token-file", str(secrets_file))
        assert "committed bets" in table
        assert json.loads(status("--json", "--secrets", str(secrets_file)))["agency"][1]["id"] == 2
    finally:
        stop_server(server)


def test_admission_pools_cap_an_address_only_when_full_and_make_room_for_others() -> None:
    """Below a full pool any address may connect; when full, the greediest address gives way."""
    from lottery.admission import Admission, Ticket

    admission = Admission(total=8, unauthenticated=4, per_address=2)
    evicted: list[str] = []
    tickets = []
    for _ in range(4):  # one address fills the pool: no cap below full
        ticket = admission.enter("10.0.0.9")
        assert isinstance(ticket, Ticket)
        ticket.on_evict = lambda: evicted.append("10.0.0.9")
        tickets.append(ticket)
    refused = admission.enter("10.0.0.9")
    assert isinstance(refused, str) and "10.0.0.9" in refused
    newcomer = admission.enter("10.0.0.1")  # another address: the oldest stranger gives way
    assert isinstance(newcomer, Ticket) and evicted == ["10.0.0.9"]
    assert (admission.open, admission.waiting) == (4, 4)
    newcomer.admit()  # authenticated: its unauthenticated slot is free again
    assert (admission.open, admission.waiting) == (4, 3)
    tickets[0].release()  # the evicted one closing frees nothing twice
    newcomer.release()
    newcomer.release()
    assert (admission.open, admission.waiting) == (3, 3)
