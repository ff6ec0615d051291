"""Authentication (secrets file, challenge-response HMAC) and TLS."""

from __future__ import annotations

import io
import ssl
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from lottery.auth import load_operator_token, load_secrets, make_secrets, parse_secret
from lottery.client import AsyncAgency, query_status, tls_context
from lottery.config import ServerConfig
from lottery.errors import AuthenticationRequired, ConfigError, ConnectionLost, ServerRefused
from lottery.protocol import (
    Auth,
    Batch,
    Challenge,
    Error,
    ErrorCode,
    Hello,
    Welcome,
    auth_mac,
)
from lottery.server import Server

from .helpers import (
    LOOPBACK,
    REPLY_TIMEOUT,
    log_events,
    make_rows,
    raw_connection,
    running_server,
    stored_bets,
)

pytestmark = pytest.mark.timeout(60)

ROW = ("Ana", "Díaz", "30904465", "1999-03-17", "7574")


def secrets_file(tmp_path: Path, agencies: int = 2) -> Path:
    path = tmp_path / "secrets.txt"
    make_secrets(agencies, path)
    return path


@asynccontextmanager
async def auth_server(tmp_path: Path, **config: Any) -> AsyncIterator[Server]:
    """A started server that authenticates agencies with a fresh secrets file."""
    async with running_server(
        tmp_path, secrets_file=str(secrets_file(tmp_path)), **config
    ) as server:
        yield server


# -- the secrets file -------------------------------------------------------------------------


def test_make_secrets_writes_a_private_file_and_never_overwrites(tmp_path: Path) -> None:
    """make-secrets gives each agency its own secret, in a 0600 file it will not clobber."""
    path = secrets_file(tmp_path, 3)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    table = load_secrets(path, 3)
    assert sorted(table) == [1, 2, 3]
    assert len(set(table.values())) == 3 and all(len(s) == 32 for s in table.values())
    with pytest.raises(ConfigError, match="exists"):
        make_secrets(3, path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1 abc\n", "expected 'agency: secret'"),
        ("9: " + "ab" * 32 + "\n", "agency 9 is not in 1..2"),
        ("1: " + "ab" * 32 + "\n1: " + "cd" * 32 + "\n", "appears twice"),
        ("1: xyz\n", "not hex digits"),
        ("1: abcd\n", "at least 16"),
    ],
)
def test_a_bad_secrets_file_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    """Each kind of bad line is refused with its file and line named."""
    path = tmp_path / "secrets.txt"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=message) as error:
        load_secrets(path, 2)
    assert "line" in str(error.value)


def test_a_secrets_file_others_can_read_is_refused(tmp_path: Path) -> None:
    """The server refuses a secrets file with group or other permissions."""
    path = secrets_file(tmp_path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_secrets(path, 2)


def test_parse_secret_takes_hex() -> None:
    """A secret is hex text of at least 16 bytes, surrounding blanks allowed."""
    assert parse_secret(" " + "0f" * 16 + "\n", "x") == bytes([15]) * 16


# -- the handshake ----------------------------------------------------------------------------


async def test_a_good_proof_gets_welcome_and_the_secret_never_travels(tmp_path: Path) -> None:
    """HELLO gets a CHALLENGE; the right HMAC gets WELCOME; the secret is not in the bytes."""
    async with auth_server(tmp_path) as server, raw_connection(server.port) as conn:
        secret = load_secrets(tmp_path / "secrets.txt", 2)[1]
        await conn.send(Hello(1))
        challenge = await conn.receive()
        assert isinstance(challenge, Challenge) and len(challenge.nonce) == 32
        proof = Auth(auth_mac(secret, 1, challenge.nonce))
        assert secret not in proof.mac
        await conn.send(proof)
        assert await conn.receive() == Welcome(0, 0)


@pytest.mark.parametrize("who", ["wrong secret", "another agency's secret"])
async def test_a_wrong_proof_is_refused_and_nothing_is_stored(tmp_path: Path, who: str) -> None:
    """A wrong proof gets AUTH_FAILED and a closed connection; a batch sent with it is dropped."""
    async with auth_server(tmp_path) as server:
        secrets = load_secrets(tmp_path / "secrets.txt", 2)
        async with raw_connection(server.port) as conn:
            await conn.send(Hello(1))
            challenge = await conn.receive()
            assert isinstance(challenge, Challenge)
            if who == "wrong secret":
                mac = auth_mac(b"\x00" * 32, 1, challenge.nonce)
            else:
                mac = auth_mac(secrets[2], 2, challenge.nonce)  # agency 2 posing as 1
            await conn.send(Auth(mac), Batch(1, [ROW]))
            reply = await conn.receive()
            assert isinstance(reply, Error) and reply.code == ErrorCode.AUTH_FAILED
            await conn.expect_eof()
    assert stored_bets(tmp_path / "data") == []


async def test_bets_before_the_proof_are_out_of_order(tmp_path: Path) -> None:
    """Between CHALLENGE and AUTH nothing but AUTH (or a status query) is accepted."""
    async with auth_server(tmp_path) as server, raw_connection(server.port) as conn:
        await conn.send(Hello(1))
        assert isinstance(await conn.receive(), Challenge)
        await conn.send(Batch(1, [ROW]))
        reply = await conn.receive()
        assert isinstance(reply, Error) and reply.code == ErrorCode.OUT_OF_ORDER
        await conn.expect_eof()
    assert stored_bets(tmp_path / "data") == []


async def test_agencies_with_their_secrets_play_a_whole_round(tmp_path: Path) -> None:
    """AsyncAgency answers the challenge with its secret and completes the round."""
    async with auth_server(tmp_path) as server:
        secrets = load_secrets(tmp_path / "secrets.txt", 2)
        results = []
        for agency_id in (1, 2):
            agency = AsyncAgency(
                agency_id, LOOPBACK, server.port, secret=secrets[agency_id], timeout=REPLY_TIMEOUT
            )
            async with agency:
                await agency.send_bets(make_rows(10))
                await agency.notify()
            results.append(agency)
        async with AsyncAgency(1, LOOPBACK, server.port, secret=secrets[1]) as agency:
            assert isinstance(await agency.winners(), list)
    assert len(stored_bets(tmp_path / "data")) == 20


async def test_an_agency_without_a_secret_is_told_it_needs_one(tmp_path: Path) -> None:
    """Against an authenticating server, an agency with no secret fails at once, clearly."""
    async with auth_server(tmp_path) as server:
        agency = AsyncAgency(1, LOOPBACK, server.port, reconnect_attempts=1)
        with pytest.raises(AuthenticationRequired, match="requires a secret"):
            await agency.connect()
        await agency.aclose()


async def test_an_agency_with_a_wrong_secret_is_refused(tmp_path: Path) -> None:
    """A wrong secret is not retried: ServerRefused with AUTH_FAILED."""
    async with auth_server(tmp_path) as server:
        agency = AsyncAgency(1, LOOPBACK, server.port, secret=b"\x01" * 32)
        with pytest.raises(ServerRefused) as error:
            await agency.connect()
        assert error.value.code == ErrorCode.AUTH_FAILED
        await agency.aclose()


async def test_an_open_server_says_so_when_it_starts(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    """Without a secrets file the server warns that any client may speak as any agency."""
    server = Server(
        ServerConfig(host=LOOPBACK, port=0, agencies=1, data_dir=str(tmp_path), sync="OFF")
    )
    await server.start()
    server.close()
    await server.wait_closed()
    (warning,) = log_events(log_stream, "auth")
    assert warning["result"] == "in_progress" and "any agency" in warning["detalle"]


# -- TLS ------------------------------------------------------------------------------------------


async def test_a_round_over_tls(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    """With --tls-cert/--tls-key, agencies trusting the CA send bets and read status over TLS."""
    cert, key = certificate
    config = ServerConfig(
        host=LOOPBACK, port=0, agencies=1, data_dir=str(tmp_path / "data"), sync="OFF",
        tls_cert=str(cert), tls_key=str(key),
    )  # fmt: skip
    server = Server(config)
    await server.start()
    try:
        tls = tls_context(str(cert))
        async with AsyncAgency(1, LOOPBACK, server.port, tls=tls) as agency:
            report = await agency.send_bets(make_rows(5))
            assert report.acknowledged == 5
        status = await query_status(LOOPBACK, server.port, REPLY_TIMEOUT, tls)
        assert status["agency"][0]["committed_bets"] == 5
        plain = AsyncAgency(1, LOOPBACK, server.port, reconnect_attempts=1, timeout=REPLY_TIMEOUT)
        with pytest.raises(ConnectionLost, match="--tls-ca"):
            await plain.connect()
        await plain.aclose()
        untrusting = AsyncAgency(1, LOOPBACK, server.port, tls=ssl.create_default_context())
        with pytest.raises((ssl.SSLError, ConnectionLost)):
            await untrusting.connect()
        await untrusting.aclose()
    finally:
        server.close()
        await server.wait_closed()


def test_the_make_secrets_command_and_the_secrets_flag(tmp_path: Path) -> None:
    """`lottery make-secrets N FILE` writes the file once; `server --secrets FILE` reads it."""
    from lottery.cli import _flags, build_parser, main
    from lottery.config import load_server_config

    path = tmp_path / "secrets.txt"
    assert main(["make-secrets", "3", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["make-secrets", "3", str(path)]) == 2  # never overwritten
    args = build_parser().parse_args(["server", "--secrets", str(path), "--agencies", "3"])
    config = load_server_config(_flags(args), {}, None)
    assert config.secrets_file == str(path)


def test_make_secrets_writes_an_operator_token_that_no_agency_can_use(tmp_path: Path) -> None:
    """make-secrets adds an operator line; only load_operator_token reads it, as no agency's."""
    path = tmp_path / "secrets.txt"
    make_secrets(3, path)
    assert sorted(load_secrets(path, 3)) == [1, 2, 3]
    token = load_operator_token(path)
    assert token is not None and len(token) == 32
    assert token not in load_secrets(path, 3).values()


def test_a_secrets_file_without_an_operator_line_has_no_token(tmp_path: Path) -> None:
    """An older secrets file, with agency lines only, has no operator token."""
    path = tmp_path / "secrets.txt"
    path.write_text("1: " + "ab" * 32 + "\n", encoding="utf-8")
    path.chmod(0o600)
    assert load_operator_token(path) is None


async def test_a_failed_tls_handshake_is_logged(
    tmp_path: Path, certificate: tuple[Path, Path], log_stream: io.StringIO
) -> None:
    """A client that speaks plain TCP to a TLS server is named in the server's log."""
    cert, key = certificate
    config = ServerConfig(
        host=LOOPBACK, port=0, agencies=1, data_dir=str(tmp_path / "data"), sync="OFF",
        tls_cert=str(cert), tls_key=str(key),
    )  # fmt: skip
    async with Server(config) as server:
        plain = AsyncAgency(1, LOOPBACK, server.port, reconnect_attempts=1, timeout=REPLY_TIMEOUT)
        with pytest.raises(ConnectionLost):
            await plain.connect()
        await plain.aclose()
    [failure] = log_events(log_stream, "tls", result="fail")
    assert failure["ip"] == LOOPBACK and failure["error"]
