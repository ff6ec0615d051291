"""`lottery.metrics`: a real server's Prometheus endpoint, scraped over loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from lottery.errors import ConfigError
from lottery.metrics import serve_metrics
from lottery.protocol import Ack, Batch, Done, Error, ErrorCode, Winners, WinnersQuery
from lottery.server import Server
from lottery.web import HttpServer

from .helpers import LOOPBACK, REPLY_TIMEOUT, make_rows, raw_connection, running_server

pytestmark = pytest.mark.timeout(60)


# -- scraping ------------------------------------------------------------------------------


@dataclass
class Response:
    """An HTTP response as the metrics endpoint sent it."""

    code: int
    headers: dict[str, str]
    body: bytes


async def request(port: int, head: bytes) -> Response:
    """Send ``head`` as a whole request and read the response until the server closes."""
    async with asyncio.timeout(REPLY_TIMEOUT):
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            writer.write(head)
            await writer.drain()
            data = await reader.read()  # asked to, the endpoint answers once, then closes
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(status_line.split(" ")[1]), headers, body)


async def get(port: int, path: str = "/metrics", method: str = "GET", accept: str = "") -> Response:
    """One HTTP/1.1 request for ``path``, asking the listener to close after it (no keep-alive)."""
    extra = f"Accept: {accept}\r\n" if accept else ""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n{extra}\r\n"
    )
    return await request(port, head.encode())


async def scrape(port: int) -> dict[str, Metric]:
    """GET /metrics and parse it: every metric family, by name."""
    response = await get(port)
    assert response.code == 200, response
    assert response.headers["content-type"].startswith("text/plain")
    families = text_string_to_metric_families(response.body.decode())
    return {family.name: family for family in families}


def sample(families: dict[str, Metric], name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly ``labels``, from a scrape."""
    family = name
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name.removesuffix(suffix) in families:
            family = name.removesuffix(suffix)
    for s in families[family].samples:
        if s.name == name and s.labels == labels:
            return s.value
    raise AssertionError(f"no sample {name}{labels} in {families[family].samples}")


@asynccontextmanager
async def metrics_of(server: Server) -> AsyncIterator[HttpServer]:
    """`serve_metrics` on 127.0.0.1, port 0, always closed after."""
    metrics = await serve_metrics(server, LOOPBACK, 0)
    try:
        yield metrics
    finally:
        await metrics.aclose()


def invalid_rows(count: int) -> list[tuple[str, str, str, str, str]]:
    """``count`` rows whose second has a non-numeric document."""
    rows = make_rows(count, start=500)
    rows[1] = (rows[1][0], rows[1][1], "12a45", rows[1][3], rows[1][4])
    return rows


# -- a round ---------------------------------------------------------------------------------


async def test_a_round_is_counted_from_the_first_bet_to_the_draw(tmp_path: Path) -> None:
    """Bets, batches, a refused batch, commits, connected and done agencies and the draw show."""
    async with (
        running_server(tmp_path) as server,
        metrics_of(server) as metrics,
        raw_connection(server.port, 1) as one,
        raw_connection(server.port, 2) as two,
    ):
        await one.send(Batch(1, make_rows(3)))  # type: ignore[arg-type]
        assert await one.receive() == Ack(1)
        await two.send(Batch(1, make_rows(2, start=100)))  # type: ignore[arg-type]
        assert await two.receive() == Ack(1)
        await one.send(Batch(2, invalid_rows(3)))  # type: ignore[arg-type]
        refusal = await one.receive()
        assert isinstance(refusal, Error) and refusal.code == ErrorCode.INVALID_BET

        during = await scrape(metrics.port)
        assert sample(during, "lottery_bets_stored_total") == 5
        assert sample(during, "lottery_batches_stored_total") == 2
        assert sample(during, "lottery_batches_refused_total") == 1
        commits = sample(during, "lottery_commits_total")
        assert 1 <= commits <= 2
        assert sample(during, "lottery_commit_duration_seconds_count") == commits
        assert sample(during, "lottery_commit_duration_seconds_bucket", le="+Inf") == commits
        assert sample(during, "lottery_commit_duration_seconds_sum") > 0
        assert sample(during, "lottery_commit_batches_count") == commits
        assert sample(during, "lottery_commit_batches_sum") == 2
        assert sample(during, "lottery_agencies") == 2
        assert sample(during, "lottery_agencies_connected") == 2
        assert sample(during, "lottery_connections") == 2
        assert sample(during, "lottery_agencies_done") == 0
        assert sample(during, "lottery_draw_done") == 0
        assert "lottery_draw_duration_seconds" not in during

        await one.send(Done())
        assert await one.receive() == Ack(0)
        halfway = await scrape(metrics.port)
        assert sample(halfway, "lottery_agencies_done") == 1
        assert sample(halfway, "lottery_draw_done") == 0

        await two.send(Done())
        assert await two.receive() == Ack(0)  # the last DONE is acked after the draw
        await two.send(WinnersQuery())
        assert isinstance(await two.receive(), Winners)
        after = await scrape(metrics.port)
        assert sample(after, "lottery_agencies_done") == 2
        assert sample(after, "lottery_draw_done") == 1
        assert sample(after, "lottery_draw_duration_seconds") > 0
        assert sample(after, "lottery_agencies_connected") == 2
        assert sample(after, "lottery_bets_stored_total") == 5


async def test_metrics_are_served_after_the_store_has_closed(tmp_path: Path) -> None:
    """Once the server has shut down, the counters are still served, without connection gauges."""
    async with running_server(tmp_path) as server:
        metrics = await serve_metrics(server, LOOPBACK, 0)
        async with raw_connection(server.port, 1) as conn:
            await conn.send(Batch(1, make_rows(4)))  # type: ignore[arg-type]
            assert await conn.receive() == Ack(1)
    try:
        families = await scrape(metrics.port)
    finally:
        await metrics.aclose()
    assert sample(families, "lottery_bets_stored_total") == 4
    assert "lottery_agencies_connected" not in families


# -- the commit hook ----------------------------------------------------------------------------


async def test_the_commit_hook_is_chained_and_restored(tmp_path: Path) -> None:
    """A hook set before keeps being called while metrics observe commits, and is back after."""
    seen: list[tuple[float, int]] = []

    def previous(seconds: float, batches: int) -> None:
        seen.append((seconds, batches))

    async with running_server(tmp_path) as server:
        server.committer.on_commit = previous
        async with metrics_of(server) as metrics, raw_connection(server.port, 1) as conn:
            assert server.committer.on_commit is not previous
            await conn.send(Batch(1, make_rows(2)))  # type: ignore[arg-type]
            assert await conn.receive() == Ack(1)
            families = await scrape(metrics.port)
        assert server.committer.on_commit is previous
    assert len(seen) == 1 and seen[0][1] == 1
    assert sample(families, "lottery_commit_batches_sum") == 1


async def test_two_endpoints_keep_their_own_registries(tmp_path: Path) -> None:
    """Two servers in one process each serve their own figures, with no name clash."""
    async with (
        running_server(tmp_path / "a") as first,
        running_server(tmp_path / "b") as second,
        metrics_of(first) as first_metrics,
        metrics_of(second) as second_metrics,
        raw_connection(first.port, 1) as conn,
    ):
        await conn.send(Batch(1, make_rows(3)))  # type: ignore[arg-type]
        assert await conn.receive() == Ack(1)
        assert sample(await scrape(first_metrics.port), "lottery_bets_stored_total") == 3
        assert sample(await scrape(second_metrics.port), "lottery_bets_stored_total") == 0
        assert first_metrics.metrics is not second_metrics.metrics


# -- the endpoint ---------------------------------------------------------------------------------


async def test_aclose_frees_the_port(tmp_path: Path) -> None:
    """After aclose the port refuses connections and can be listened on again."""
    async with running_server(tmp_path) as server:
        metrics = await serve_metrics(server, LOOPBACK, 0)
        port = metrics.port
        assert port > 0
        await metrics.aclose()
        await metrics.aclose()  # a second call does nothing
        assert server.committer.on_commit is None
        with pytest.raises(ConnectionRefusedError):
            async with asyncio.timeout(REPLY_TIMEOUT):
                await asyncio.open_connection(LOOPBACK, port)
        async with metrics_of_port(server, port) as again:
            assert again.port == port
            assert "lottery_bets_stored" in await scrape(port)


@asynccontextmanager
async def metrics_of_port(server: Server, port: int) -> AsyncIterator[HttpServer]:
    """`serve_metrics` on 127.0.0.1 and the given (freed) port, always closed after."""
    metrics = await serve_metrics(server, LOOPBACK, port)
    try:
        yield metrics
    finally:
        await metrics.aclose()


async def test_a_taken_port_raises_and_leaves_no_hook(tmp_path: Path) -> None:
    """Listening on a port in use raises OSError and leaves the committer as it was."""
    async with running_server(tmp_path) as server, metrics_of(server) as metrics:
        hook = server.committer.on_commit
        with pytest.raises(OSError):
            await serve_metrics(server, LOOPBACK, metrics.port)
        assert server.committer.on_commit == hook


async def test_a_stalled_scrape_is_hung_up_on_and_does_not_hold_aclose(tmp_path: Path) -> None:
    """A half-sent request is hung up on after the request timeout; aclose does not wait for it."""
    async with running_server(tmp_path) as server:
        metrics = await serve_metrics(server, LOOPBACK, 0, request_timeout=0.2)
        reader, writer = await asyncio.open_connection(LOOPBACK, metrics.port)
        try:
            writer.write(b"GET /metr")  # half a request line: the handler is reading
            await writer.drain()
            async with asyncio.timeout(REPLY_TIMEOUT):
                await metrics.aclose()
                # EOF, or a reset if the server closed before reading those bytes.
                with contextlib.suppress(ConnectionResetError):
                    assert await reader.read() == b""
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def test_other_requests_get_plain_http_errors(tmp_path: Path) -> None:
    """Another method is 405 and a bad request line 400; a query string is fine."""
    async with running_server(tmp_path) as server, metrics_of(server) as metrics:
        refused = await get(metrics.port, method="POST")
        assert refused.code == 405 and "GET" in refused.headers["allow"]
        assert (await request(metrics.port, b"nonsense\r\n\r\n")).code == 400
        assert (await get(metrics.port, "/metrics?x=1")).code == 200


async def test_the_registry_can_be_rendered_on_the_event_loop(tmp_path: Path) -> None:
    """Rendering the registry on the server's own loop reads the server there, without a wait."""
    async with running_server(tmp_path) as server, metrics_of(server) as metrics:
        text = generate_latest(metrics.metrics.registry).decode()
    assert "lottery_connections 0.0" in text
    assert "lottery_agencies 2.0" in text


async def test_openmetrics_is_served_when_asked_for(tmp_path: Path) -> None:
    """A scraper that accepts OpenMetrics gets it, ending with the # EOF line."""
    async with running_server(tmp_path) as server, metrics_of(server) as metrics:
        response = await get(metrics.port, accept="application/openmetrics-text; version=1.0.0")
    assert response.code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.body.endswith(b"# EOF\n")
    assert b"lottery_bets_stored_total 0.0" in response.body


async def test_a_missing_prometheus_client_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without prometheus_client, serve_metrics raises ConfigError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now raises ImportError
    async with running_server(tmp_path) as server:
        with pytest.raises(ConfigError, match=r"pip install 'lottery\[metrics\]'"):
            await serve_metrics(server, LOOPBACK, 0)
        assert server.committer.on_commit is None
