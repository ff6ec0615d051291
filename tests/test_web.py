"""`lottery.web`: the server's one HTTP listener (page, /status.json, /metrics), over loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import io
import json
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from lottery import web
from lottery.auth import load_operator_token, make_secrets
from lottery.cli import main
from lottery.config import ServerConfig, load_server_config
from lottery.errors import ConfigError
from lottery.metrics import make_metrics
from lottery.protocol import Ack, Batch, Done, Winners, WinnersQuery
from lottery.server import Server
from lottery.web import Access, HttpServer, serve_http
from roundrunner import log_value, start_server, stop_server

from .conftest import UNIT
from .helpers import LOOPBACK, REPLY_TIMEOUT, make_rows, raw_connection, running_server

pytestmark = pytest.mark.timeout(60 * UNIT)

TOKEN = bytes(range(32))


@dataclass
class Reply:
    """One HTTP answer, as http.client read it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return document


def _fetch(port: int, paths: list[str], headers: dict[str, str], method: str) -> list[Reply]:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=REPLY_TIMEOUT)
    try:
        replies = []
        for path in paths:  # one kept-alive connection for all of them
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            found = {k.lower(): v for k, v in response.getheaders()}
            replies.append(Reply(response.status, found, body))
        return replies
    finally:
        connection.close()


async def fetch(
    port: int,
    path: str = "/status.json",
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> Reply:
    """One request to the listener (http.client, on a thread)."""
    (reply,) = await asyncio.to_thread(_fetch, port, [path], headers or {}, method)
    return reply


@asynccontextmanager
async def listener(server: Server, **kwargs: object) -> AsyncIterator[HttpServer]:
    """`serve_http` on 127.0.0.1, port 0, always closed after."""
    http = await serve_http(server, LOOPBACK, 0, **kwargs)  # type: ignore[arg-type]
    try:
        yield http
    finally:
        await http.aclose()


def bearer(token: bytes) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.hex()}"}


# -- /status.json ------------------------------------------------------------------------------


async def test_status_json_is_the_document_lottery_status_json_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_stream: io.StringIO
) -> None:
    """/status.json and `lottery status --json` give one document (but for open connections)."""
    async with (
        running_server(tmp_path, agencies=3) as server,
        listener(server) as http,
        raw_connection(server.port, 2) as two,
    ):
        await two.send(Batch(1, make_rows(4)))  # type: ignore[arg-type]
        assert await two.receive() == Ack(1)
        reply = await fetch(http.port)
        argv = ["status", "--server", f"{LOOPBACK}:{server.port}", "--json"]
        assert await asyncio.to_thread(main, argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    served = reply.json()
    # The STATUS query is itself an open connection while it is answered.
    assert printed.pop("connections") == served.pop("connections") + 1
    assert printed == served
    assert served["agency"][1]["committed_bets"] == 4  # type: ignore[index]


async def test_the_draw_shows_its_number_and_each_agencys_winner_count(tmp_path: Path) -> None:
    """Before the draw there is no number nor winner counts; after it they are the round's."""
    async with (
        running_server(tmp_path, winning_number=7574) as server,
        listener(server) as http,
        raw_connection(server.port, 1) as one,
        raw_connection(server.port, 2) as two,
    ):
        await one.send(Batch(1, make_rows(5, winners=[0, 3])))  # type: ignore[arg-type]
        assert await one.receive() == Ack(1)
        await two.send(Batch(1, make_rows(3, start=100)))  # type: ignore[arg-type]
        assert await two.receive() == Ack(1)
        before = (await fetch(http.port)).json()
        assert "winning_number" not in before
        assert not [a for a in before["agency"] if "winners" in a]  # type: ignore[attr-defined]
        for conn in (one, two):
            await conn.send(Done())
            assert await conn.receive() == Ack(0)
        await one.send(WinnersQuery())
        winners = await one.receive()
        assert isinstance(winners, Winners) and len(winners.documents) == 2
        after = (await fetch(http.port)).json()
    assert after["drawn"] is True
    assert after["winning_number"] == 7574
    assert [a["winners"] for a in after["agency"]] == [2, 0]  # type: ignore[attr-defined]


async def test_status_is_503_until_the_server_is_started(tmp_path: Path) -> None:
    """A listener opened before the server starts answers 503, then the round once told."""
    config = ServerConfig(host=LOOPBACK, port=0, agencies=2, data_dir=str(tmp_path), sync="OFF")
    server = Server(config)
    async with listener(server, started=False) as http:
        starting = await fetch(http.port)
        assert starting.status == 503 and "starting" in starting.json()["error"]  # type: ignore[operator]
        await server.start()
        try:
            http.server_started()
            assert (await fetch(http.port)).json()["agencies"] == 2
        finally:
            server.close()
            await server.wait_closed()


# -- the operator token -------------------------------------------------------------------------


async def test_with_secrets_the_round_needs_the_operator_token(tmp_path: Path) -> None:
    """With a token required, /status.json is 401 and empty without it or with a wrong one."""
    async with (
        running_server(tmp_path) as server,
        listener(server, access=Access(True, TOKEN), metrics=make_metrics(server)) as http,
    ):
        for headers in (
            {},
            bearer(bytes(32)),
            {"Authorization": "Bearer zz"},
            {"Authorization": "x"},
        ):
            refused = await fetch(http.port, headers=headers)
            assert refused.status == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            assert set(refused.json()) == {"error"}
        allowed = await fetch(http.port, headers=bearer(TOKEN))
        assert allowed.status == 200 and allowed.json()["agencies"] == 2
        # The page holds no data and /metrics stays open to the bound host, as documented.
        assert (await fetch(http.port, "/")).status == 200
        assert (await fetch(http.port, "/metrics")).status == 200


async def test_a_secrets_file_without_an_operator_token_locks_the_round(tmp_path: Path) -> None:
    """Token required but none configured: every request for the round is refused, saying why."""
    async with running_server(tmp_path) as server, listener(server, access=Access(True)) as http:
        refused = await fetch(http.port, headers=bearer(TOKEN))
    assert refused.status == 401
    assert "no operator token" in str(refused.json()["error"])


# -- the page ------------------------------------------------------------------------------------


async def test_the_page_is_one_self_contained_file_allowed_by_its_policy(tmp_path: Path) -> None:
    """/ serves round.html whose inline script and style are exactly what its CSP hashes allow."""
    async with running_server(tmp_path) as server, listener(server) as http:
        page = await fetch(http.port, "/")
        head = await fetch(http.port, "/", method="HEAD")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.body
    assert html == (Path(web.__file__).parent / "round.html").read_bytes()
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(html))
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    for tag in ("script", "style"):
        (code,) = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), html, re.S)
        digest = base64.b64encode(hashlib.sha256(code).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in policy
    # No external assets, no inline handlers or style attributes the policy would block.
    assert not re.search(rb"(src|href)=|https?://|\sstyle=|\son[a-z]+=", html)


async def test_without_prometheus_client_metrics_is_503_naming_the_extra(tmp_path: Path) -> None:
    """With no metrics, /metrics answers 503 saying what to install; the rest still works."""
    async with running_server(tmp_path) as server, listener(server) as http:
        reply = await fetch(http.port, "/metrics")
        assert (await fetch(http.port)).status == 200
    assert reply.status == 503
    assert b"pip install 'lottery[metrics]'" in reply.body


# -- HTTP itself ----------------------------------------------------------------------------------


async def test_other_paths_methods_and_hosts_get_plain_errors(tmp_path: Path) -> None:
    """An unknown path is 404, POST 405, and a host that is not loopback 403 (DNS rebinding)."""
    async with running_server(tmp_path) as server, listener(server) as http:
        assert (await fetch(http.port, "/nope")).status == 404
        posted = await fetch(http.port, "/status.json", method="POST")
        assert posted.status == 405 and posted.headers["allow"] == "GET, HEAD"
        evil = await fetch(http.port, headers={"Host": "rebind.example:80"})
        assert evil.status == 403
        assert (await fetch(http.port, headers={"Host": f"localhost:{http.port}"})).status == 200
        assert (await fetch(http.port, headers={"Host": f"[::1]:{http.port}"})).status == 200
        assert (await fetch(http.port, "/status.json?x=1")).status == 200


async def test_a_kept_alive_connection_answers_each_request_in_order(tmp_path: Path) -> None:
    """Several requests on one connection (a polling page) are answered one by one, in order."""
    async with running_server(tmp_path) as server, listener(server) as http:
        paths = ["/status.json", "/", "/status.json", "/nope"]
        replies = await asyncio.to_thread(_fetch, http.port, paths, {}, "GET")
    assert [r.status for r in replies] == [200, 200, 200, 404]


async def test_a_bad_request_is_400_and_a_stalled_one_is_hung_up_on(tmp_path: Path) -> None:
    """Garbage gets 400 then a close; half a request is hung up on after the request timeout."""
    async with running_server(tmp_path) as server, listener(server, request_timeout=0.2) as http:
        async with asyncio.timeout(REPLY_TIMEOUT):
            reader, writer = await asyncio.open_connection(LOOPBACK, http.port)
            writer.write(b"nonsense\r\n\r\n")
            answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 400 ")
            reader, writer = await asyncio.open_connection(LOOPBACK, http.port)
            writer.write(b"GET /status.json HTTP/1.1\r\nHo")
            assert await reader.read() == b""  # closed by the server, unanswered
            writer.close()


async def test_aclose_hangs_up_open_connections_and_frees_the_port(tmp_path: Path) -> None:
    """aclose ends kept-alive connections at once and a second call does nothing."""
    async with running_server(tmp_path) as server:
        http = await serve_http(server, LOOPBACK, 0)
        port = http.port
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(f"GET / HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
        async with asyncio.timeout(REPLY_TIMEOUT):
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            await http.aclose()
            await http.aclose()
            await reader.read()  # EOF: the kept-alive connection was closed
        writer.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(LOOPBACK, port)


async def test_connections_past_the_limit_are_closed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the limit reached, a new connection is closed unanswered; the open one still works."""
    monkeypatch.setattr(web.http, "MAX_CONNECTIONS", 1)
    async with running_server(tmp_path) as server, listener(server) as http:
        first_reader, first = await asyncio.open_connection(LOOPBACK, http.port)
        first.write(f"GET /nope HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
        async with asyncio.timeout(REPLY_TIMEOUT):
            assert (await first_reader.readline()).startswith(b"HTTP/1.1 404")
            reader, writer = await asyncio.open_connection(LOOPBACK, http.port)
            assert await reader.read() == b""
        writer.close()
        first.close()


# -- settings ----------------------------------------------------------------------------------


def test_metrics_port_is_the_http_listeners_old_name() -> None:
    """--metrics-port alone opens the one listener on --metrics-host; --http-port comes first."""
    assert ServerConfig().http_address is None
    old = load_server_config({"metrics_port": "9100", "metrics_host": "::1"}, {})
    assert old.http_address == ("::1", 9100)
    new = load_server_config({"http_port": "0"}, {"SERVER_HTTP_HOST": "0.0.0.0"})
    assert new.http_address == ("0.0.0.0", 0)
    both = load_server_config({"http_port": "8080", "metrics_port": "8080"}, {})
    assert both.http_address == ("127.0.0.1", 8080)


def test_two_different_ports_for_the_one_listener_are_a_config_error() -> None:
    """--http-port and --metrics-port with different ports fail with one line naming both."""
    with pytest.raises(ConfigError, match="--http-port 8080 and --metrics-port 9100 differ"):
        load_server_config({"http_port": "8080", "metrics_port": "9100"}, {})


# -- a real server process ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@pytest.mark.e2e
def test_lottery_server_metrics_port_is_the_same_listener(tmp_path: Path) -> None:
    """The old `--metrics-port P` opens the one listener on P: metrics with commit figures, page."""
    port = _free_port()  # --metrics-port has no "any port" value: 0 means off
    server = start_server(tmp_path / "data", 1, extra_args=["--metrics-port", str(port)])
    try:
        assert log_value(server.lines, "http", "port") == str(port)
        replies = _fetch(port, ["/metrics", "/", "/status.json"], {}, "GET")
    finally:
        assert stop_server(server) == 0
    assert [r.status for r in replies] == [200, 200, 200]
    assert b"lottery_commit_duration_seconds_count 0.0" in replies[0].body


@pytest.mark.e2e
def test_lottery_server_http_port_with_secrets_serves_the_operator_only(tmp_path: Path) -> None:
    """`lottery server --http-port 0 --secrets F` logs its HTTP port, wants F's operator token."""
    secrets = tmp_path / "secrets.txt"
    make_secrets(2, secrets)
    token = load_operator_token(secrets)
    assert token is not None
    server = start_server(
        tmp_path / "data", 2, extra_args=["--http-port", "0", "--secrets", str(secrets)]
    )
    try:
        port = int(log_value(server.lines, "http", "port") or 0)
        assert port > 0
        (refused,) = _fetch(port, ["/status.json"], {}, "GET")
        (allowed,) = _fetch(port, ["/status.json"], bearer(token), "GET")
        (metrics,) = _fetch(port, ["/metrics"], {}, "GET")
    finally:
        assert stop_server(server) == 0
    assert refused.status == 401 and b"agency" not in refused.body
    assert allowed.status == 200 and allowed.json()["agencies"] == 2
    assert metrics.status == 200 and b"lottery_bets_stored_total" in metrics.body
    assert "resource: http" in server.log()  # closed on the way out


async def test_an_error_while_answering_is_a_500_and_the_listener_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_stream: io.StringIO
) -> None:
    """A request whose answer raises gets 500 and a logged error; the next request is answered."""
    async with running_server(tmp_path) as server, listener(server) as http:

        def broken() -> dict[str, object]:
            raise RuntimeError("boom")

        monkeypatch.setattr(server.round, "status", broken)
        failed = await fetch(http.port)
        monkeypatch.undo()
        assert (await fetch(http.port)).status == 200
    assert failed.status == 500
    assert "boom" in log_stream.getvalue()
