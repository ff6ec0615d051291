"""Prometheus metrics for ``lottery server --metrics-port``.

`serve_metrics(server, host, port)` answers ``GET /metrics`` over HTTP with
the round's figures in Prometheus' text format (or OpenMetrics, if the scraper
asks for it), so a dashboard can follow a round while it runs: bets and
batches stored and refused, commits and how long they take, how many batches
each commit groups, agencies connected and done, and the draw.

How the figures are gathered, and why:

- Counters and gauges are read from the server's own state at scrape time by
  a custom collector (`_ServerCollector`): the server already keeps them
  (``Server.counters``, the committer's counts, the barrier), so there is no
  polling loop and no second copy that could drift.
- Connected agencies come from ``Server.status()``, which is async; the HTTP
  handler awaits it (with a timeout) just before rendering and hands the
  snapshot to the collector. If it fails (the store is closing) the rest of
  the figures are still served.
- Commit latency and batches per commit are distributions, not state, so
  they are histograms fed by the committer's ``on_commit`` hook (chained to
  any previous hook, and unhooked by `MetricsServer.aclose`).

Each `MetricsServer` has its own ``CollectorRegistry``, never the global one,
so several servers in one process (tests, benchmarks) do not collide.

The HTTP side is a tiny asyncio handler, not prometheus_client's threading
server: it lives on the server's event loop, every await has a timeout, and
`MetricsServer.aclose` cancels it. prometheus_client is imported only by
`serve_metrics`: it is an optional extra (``pip install 'lottery[metrics]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .log import get_logger

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.metrics_core import Metric

    from .server import Server

__all__ = ["MISSING_DEPENDENCY", "MetricsServer", "serve_metrics"]

MISSING_DEPENDENCY = "--metrics-port needs prometheus_client: pip install 'lottery[metrics]'"

#: Seconds a scraper has to send its request, and to take the answer.
REQUEST_TIMEOUT = 5.0
#: Seconds to wait for the server's status (it waits for the store's thread,
#: which may be in the middle of a commit).
STATUS_TIMEOUT = 2.0
#: Seconds to wait for a connection or the listener to close.
CLOSE_TIMEOUT = 1.0
#: The most bytes a request's head (request line and headers) may take.
MAX_REQUEST_HEAD = 16384

# A commit takes from well under a millisecond (sync=OFF, few bets) to tens of
# milliseconds (an fsync'd group of 4096 bets); a slow disk shows past that.
COMMIT_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
# One batch per commit means no grouping; hundreds mean many agencies share
# each fsync (a group holds at most max_group_bets bets, 4096 by default).
COMMIT_BATCHES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

CommitHook = Callable[[float, int], None]


class _ServerCollector:
    """Reads the server's counters and round state each time it is collected.

    prometheus_client takes any object with a ``collect`` method (a protocol),
    so this class needs nothing from it at import time.
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        #: ``Server.status()`` as of this scrape; set by the HTTP handler right
        #: before rendering and cleared right after, with no await in between,
        #: so concurrent scrapes cannot see each other's snapshot.
        self.status: dict[str, Any] | None = None

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        server = self._server
        stats = server.round.stats
        committer = server.committer
        barrier = server.round.barrier
        yield CounterMetricFamily(
            "lottery_bets_stored",
            "Bets durably stored since the server started (duplicates not counted).",
            value=stats.bets_stored,
        )
        yield CounterMetricFamily(
            "lottery_batches_stored",
            "Batches durably stored (and acknowledged) since the server started.",
            value=stats.batches_stored,
        )
        yield CounterMetricFamily(
            "lottery_batches_refused",
            "Batches refused since the server started: invalid bets, sequence gaps, store errors.",
            value=stats.batches_refused,
        )
        yield CounterMetricFamily(
            "lottery_commits",
            "Successful store transactions (group commits) since the server started.",
            value=committer.commits,
        )
        yield GaugeMetricFamily(
            "lottery_agencies", "Agencies in the round (N).", value=server.config.agencies
        )
        yield GaugeMetricFamily(
            "lottery_agencies_done",
            "Agencies that said they are done (the draw waits for all N).",
            value=len(barrier.done),
        )
        yield GaugeMetricFamily(
            "lottery_draw_done",
            "1 once the draw has been made, else 0.",
            value=int(server.round.drawn),
        )
        if stats.draw_seconds is not None:
            # Unknown when the draw was made before a restart: left out, not 0.
            yield GaugeMetricFamily(
                "lottery_draw_duration_seconds",
                "Seconds the draw took (made by this process).",
                value=stats.draw_seconds,
            )
        status = self.status
        if status is not None:
            yield GaugeMetricFamily(
                "lottery_agencies_connected",
                "Agencies with at least one open connection past the handshake.",
                value=sum(1 for agency in status["agency"] if agency["connected"]),
            )
            yield GaugeMetricFamily(
                "lottery_connections",
                "Open connections, handshaken or not (status queries included).",
                value=status["connections"],
            )


class MetricsServer:
    """The HTTP endpoint of one server's metrics. Made by `serve_metrics`.

    Attributes:
        registry: this endpoint's own prometheus_client registry.
    """

    def __init__(
        self,
        server: Server,
        registry: CollectorRegistry,
        collector: _ServerCollector,
        commit_seconds: Histogram,
        commit_batches: Histogram,
    ) -> None:
        self.registry = registry
        self._server = server
        self._collector = collector
        self._commit_seconds = commit_seconds
        self._commit_batches = commit_batches
        self._listener: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._log = get_logger()
        # Chain, don't replace: someone else (a benchmark, a second endpoint)
        # may observe commits too.
        self._previous_hook: CommitHook | None = server.committer.on_commit
        server.committer.on_commit = self._on_commit

    @property
    def port(self) -> int:
        """The port listened on (the one picked, when asked for port 0)."""
        assert self._listener is not None, "the metrics server is not started"
        return int(self._listener.sockets[0].getsockname()[1])

    async def _start(self, host: str, port: int) -> None:
        try:
            self._listener = await asyncio.start_server(
                self._handle, host, port, limit=MAX_REQUEST_HEAD
            )
        except BaseException:  # e.g. the port is taken: do not leave the hook behind
            self._unhook()
            raise
        self._log.info("metrics", result="success", host=host, port=self.port)

    def _on_commit(self, seconds: float, batches: int) -> None:
        # The committer calls this inside its commit's error handling, so it
        # must not raise: Histogram.observe does not, on a float.
        if not self._closed:
            self._commit_seconds.observe(seconds)
            self._commit_batches.observe(batches)
        if self._previous_hook is not None:
            self._previous_hook(seconds, batches)

    def _unhook(self) -> None:
        committer = self._server.committer
        # If another hook was chained after ours, it still calls ours, which
        # then only passes commits on (``_closed``); else restore the previous.
        if committer.on_commit == self._on_commit:
            committer.on_commit = self._previous_hook

    async def aclose(self) -> None:
        """Stop listening, end the open scrapes and unhook from the committer.

        Safe to call more than once.
        """
        if self._closed:
            return
        self._closed = True
        self._unhook()
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_TIMEOUT)
        if self._listener is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._listener.wait_closed()
        self._log.info("close_resource", result="success", resource="metrics")

    # -- HTTP ---------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self._closed:  # accepted while aclose() was running: hang up at once
                return
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return  # not HTTP, or a head too large to be a scrape: just hang up
            response = await self._respond(head)
            writer.write(response)
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await writer.drain()
        except (OSError, TimeoutError):
            pass  # the scraper went away or stalled; the next scrape starts afresh
        except asyncio.CancelledError:
            # aclose() cancelled this scrape. End the task normally rather than
            # cancelled: Python 3.11's asyncio.start_server logs a cancelled
            # connection task as an error ("Exception in callback"; fixed in 3.12).
            if not self._closed:
                raise
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await writer.wait_closed()
            self._tasks.discard(task)

    async def _respond(self, head: bytes) -> bytes:
        """The whole HTTP response to a request whose head is ``head``."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response(400, "Bad Request", b"bad request line\n")
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return _response(405, "Method Not Allowed", b"only GET\n", extra="Allow: GET, HEAD")
        if target.split("?", 1)[0] != "/metrics":
            return _response(404, "Not Found", b"metrics are at /metrics\n")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        body, content_type = await self._render(headers.get("accept", ""))
        return _response(200, "OK", body, content_type, head_only=method == "HEAD")

    async def _render(self, accept: str) -> tuple[bytes, str]:
        from prometheus_client.exposition import choose_encoder

        status: dict[str, Any] | None = None
        try:
            status = self._server.status()
        except Exception as exc:  # the store is closing or busy: serve the other figures
            self._log.debug("metrics_status", result="fail", error=repr(exc))
        encoder, content_type = choose_encoder(accept)
        # No await between setting the snapshot and rendering (see _ServerCollector.status).
        self._collector.status = status
        try:
            return encoder(self.registry), content_type
        finally:
            self._collector.status = None


def _response(
    code: int,
    reason: str,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    extra: str = "",
    head_only: bool = False,
) -> bytes:
    # One request per connection (Connection: close) keeps the handler simple;
    # Prometheus scrapes every few seconds, so keep-alive would save nothing.
    header_lines = [
        f"HTTP/1.1 {code} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *([extra] if extra else []),
    ]
    head = ("\r\n".join(header_lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


async def serve_metrics(server: Server, host: str, port: int) -> MetricsServer:
    """Serve ``server``'s metrics at ``http://host:port/metrics`` until ``aclose()``.

    Args:
        server: the lottery server to report on (started or not).
        host, port: where to listen; port 0 picks a free one (see ``.port``).

    Raises:
        ConfigError: prometheus_client is not installed.
        OSError: the address could not be listened on (e.g. the port is taken).
    """
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(MISSING_DEPENDENCY) from None

    registry = prometheus_client.CollectorRegistry()
    collector = _ServerCollector(server)
    registry.register(collector)
    # The process' memory, CPU and open files (Linux), as the default registry has.
    prometheus_client.ProcessCollector(registry=registry)
    commit_seconds = prometheus_client.Histogram(
        "lottery_commit_duration_seconds",
        "Seconds each successful commit took on the store's thread (one transaction).",
        buckets=COMMIT_SECONDS_BUCKETS,
        registry=registry,
    )
    commit_batches = prometheus_client.Histogram(
        "lottery_commit_batches",
        "Batches grouped into each successful commit (more means fewer fsyncs per batch).",
        buckets=COMMIT_BATCHES_BUCKETS,
        registry=registry,
    )
    metrics = MetricsServer(server, registry, collector, commit_seconds, commit_batches)
    await metrics._start(host, port)
    return metrics
