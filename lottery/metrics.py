"""Prometheus metrics for ``lottery server --metrics-port``.

`serve_metrics(server, host, port)` answers ``GET /metrics`` over HTTP with
the round's figures in Prometheus' text format (or OpenMetrics, if the scraper
asks for it), so a dashboard can follow a round while it runs: bets and
batches stored and refused, commits and how long they take, how many batches
each commit groups, agencies connected and done, and the draw.

How the figures are gathered, and why:

- Counters and gauges are read from the server's state at scrape time by a
  custom collector: the server already keeps them, so there is no polling
  loop and no second copy that could drift. Every read of the server's state
  is in `read_server`, at the top of this module, and nowhere else.
- Commit latency and batches per commit are distributions, not state, so
  they are histograms fed by the committer's ``on_commit`` hook (chained to
  any previous hook, and unhooked by `MetricsServer.aclose`).

The HTTP side is prometheus_client's own WSGI app and threading server, on a
thread of its own. Nothing it reads needs an await (the connection gauges
count the live connections in memory rather than asking the store), so the
event loop is only asked to run `read_server`, a few microseconds, once per
scrape. A scraper that stalls is hung up on after `REQUEST_TIMEOUT`.

Each `MetricsServer` has its own ``CollectorRegistry``, never the global one,
so several servers in one process (tests, benchmarks) do not collide.
prometheus_client is imported only by `serve_metrics`: it is an optional
extra (``pip install 'lottery[metrics]'``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .log import get_logger

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.metrics_core import Metric

    from .committer import Committer
    from .server import Server

__all__ = ["MISSING_DEPENDENCY", "MetricsServer", "ServerFigures", "read_server", "serve_metrics"]

MISSING_DEPENDENCY = "--metrics-port needs prometheus_client: pip install 'lottery[metrics]'"

#: Seconds a scraper has to send its request, and to take the answer.
REQUEST_TIMEOUT = 5.0
#: Seconds a scrape waits for the event loop to read the server's state.
READ_TIMEOUT = 2.0
#: Seconds between the HTTP thread's checks for `MetricsServer.aclose`.
POLL_INTERVAL = 0.05

# A commit takes from well under a millisecond (sync=OFF, few bets) to tens of
# milliseconds (an fsync'd group of 4096 bets); a slow disk shows past that.
COMMIT_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
# One batch per commit means no grouping; hundreds mean many agencies share
# each fsync (a group holds at most max_group_bets bets, 4096 by default).
COMMIT_BATCHES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

CommitHook = Callable[[float, int], None]


# -- the server's state: every read of it is here ---------------------------------------------


@dataclass(frozen=True)
class ServerFigures:
    """What the metrics report about the server, as of one moment."""

    bets_stored: int
    batches_stored: int
    batches_refused: int
    commits: int
    agencies: int
    agencies_done: int
    drawn: bool
    #: None when the draw was made before a restart (or not yet).
    draw_seconds: float | None
    #: None once shutdown has begun: the connections are being closed.
    connections: int | None
    agencies_connected: int | None


def read_server(server: Server) -> ServerFigures:
    """The figures from ``server``'s state, all in memory: no await, no store call.

    Runs on the server's event loop (see `MetricsServer._read`), which is the
    only thread that changes that state.
    """
    round_ = server.round
    stats = round_.stats
    barrier = round_.barrier
    connections = agencies_connected = None
    if not barrier.closed:
        status = round_.status()
        connections = status["connections"]
        agencies_connected = sum(a["connected"] for a in status["agency"])
    return ServerFigures(
        bets_stored=stats.bets_stored,
        batches_stored=stats.batches_stored,
        batches_refused=stats.batches_refused,
        commits=committer_of(server).commits,
        agencies=server.config.agencies,
        agencies_done=len(barrier.done),
        drawn=round_.drawn,
        draw_seconds=stats.draw_seconds,
        connections=connections,
        agencies_connected=agencies_connected,
    )


def committer_of(server: Server) -> Committer:
    """The committer whose ``on_commit`` hook feeds the histograms."""
    return server.committer


# -- the collector ----------------------------------------------------------------------------


#: (name, type, `ServerFigures` field, help) of each figure; a field that is
#: None is left out of the scrape rather than shown as 0.
_FAMILIES = (
    ("lottery_bets_stored", "counter", "bets_stored",
     "Bets durably stored since the server started (duplicates not counted)."),
    ("lottery_batches_stored", "counter", "batches_stored",
     "Batches durably stored (and acknowledged) since the server started."),
    ("lottery_batches_refused", "counter", "batches_refused",
     "Batches refused since the server started: invalid bets, sequence gaps, store errors."),
    ("lottery_commits", "counter", "commits",
     "Successful store transactions (group commits) since the server started."),
    ("lottery_agencies", "gauge", "agencies", "Agencies in the round (N)."),
    ("lottery_agencies_done", "gauge", "agencies_done",
     "Agencies that said they are done (the draw waits for all N)."),
    ("lottery_draw_done", "gauge", "drawn", "1 once the draw has been made, else 0."),
    ("lottery_draw_duration_seconds", "gauge", "draw_seconds",
     "Seconds the draw took (made by this process)."),
    ("lottery_agencies_connected", "gauge", "agencies_connected",
     "Agencies with at least one open connection past the handshake."),
    ("lottery_connections", "gauge", "connections",
     "Open connections, handshaken or not (status queries included)."),
)  # fmt: skip


class _ServerCollector:
    """Turns the server's figures into metric families each time it is collected.

    prometheus_client takes any object with a ``collect`` method (a protocol),
    so this class needs nothing from it at import time.
    """

    def __init__(self, read: Callable[[], ServerFigures | None]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        figures = self._read()
        if figures is None:  # the event loop did not answer: the histograms still show
            return
        for name, kind, field, documentation in _FAMILIES:
            value = getattr(figures, field)
            if value is not None:
                family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                yield family(name, documentation, value=float(value))


# -- the endpoint -----------------------------------------------------------------------------


class MetricsServer:
    """The HTTP endpoint of one server's metrics. Made by `serve_metrics`.

    Attributes:
        registry: this endpoint's own prometheus_client registry.
    """

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop) -> None:
        import prometheus_client

        self._server = server
        self._loop = loop
        self._log = get_logger()
        self.registry: CollectorRegistry = prometheus_client.CollectorRegistry()
        self.registry.register(_ServerCollector(self._read))
        # The process' memory, CPU and open files (Linux), as the default registry has.
        prometheus_client.ProcessCollector(registry=self.registry)
        self._commit_seconds: Histogram = prometheus_client.Histogram(
            "lottery_commit_duration_seconds",
            "Seconds each successful commit took on the store's thread (one transaction).",
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self._commit_batches: Histogram = prometheus_client.Histogram(
            "lottery_commit_batches",
            "Batches grouped into each successful commit (more means fewer fsyncs per batch).",
            buckets=COMMIT_BATCHES_BUCKETS,
            registry=self.registry,
        )
        self._httpd: WSGIServer | None = None
        self._previous_hook: CommitHook | None = None
        self._closed = False

    @property
    def port(self) -> int:
        """The port listened on (the one picked, when asked for port 0)."""
        assert self._httpd is not None, "the metrics server is not started"
        return self._httpd.server_port

    def _start(self, host: str, port: int, request_timeout: float) -> None:
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from prometheus_client import make_wsgi_app
        from prometheus_client.exposition import ThreadingWSGIServer

        class Handler(WSGIRequestHandler):
            # A scraper that stalls would otherwise hold its thread forever.
            timeout = request_timeout

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape on stderr would drown the server's log

        class Listener(ThreadingWSGIServer):
            # HTTPServer listens on IPv4 only; pick the family of --metrics-host.
            address_family = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0][0]

        # prometheus_client's app answers GET on any path, not only /metrics.
        app = make_wsgi_app(self.registry)
        self._httpd = make_server(host, port, app, Listener, Handler)  # binds: may raise OSError
        threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL},
            name="lottery-metrics",
            daemon=True,
        ).start()

    def _hook(self) -> None:
        # Chain, don't replace: someone else (a benchmark, a second endpoint)
        # may observe commits too.
        committer = committer_of(self._server)
        self._previous_hook = committer.on_commit
        committer.on_commit = self._on_commit

    def _read(self) -> ServerFigures | None:
        """`read_server` on the event loop, called from a scrape's thread."""

        async def read() -> ServerFigures:
            return read_server(self._server)

        with contextlib.suppress(RuntimeError):  # no running loop: this is a scrape's thread
            if asyncio.get_running_loop() is self._loop:  # e.g. generate_latest(registry)
                return read_server(self._server)
        # The server's state is changed on its event loop only; reading it
        # there means a set of connections never changes size mid-count.
        try:
            future = asyncio.run_coroutine_threadsafe(read(), self._loop)
        except RuntimeError:  # the loop is closed: the process is on its way out
            return None
        try:
            return future.result(READ_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
        except Exception as exc:
            self._log.debug("metrics_read", result="fail", error=repr(exc))
        return None

    def _on_commit(self, seconds: float, batches: int) -> None:
        # The committer calls this inside its commit's error handling, so it
        # must not raise: Histogram.observe does not, on a float.
        if not self._closed:
            self._commit_seconds.observe(seconds)
            self._commit_batches.observe(batches)
        if self._previous_hook is not None:
            self._previous_hook(seconds, batches)

    def _unhook(self) -> None:
        committer = committer_of(self._server)
        # If another hook was chained after ours, it still calls ours, which
        # then only passes commits on (``_closed``); else restore the previous.
        if committer.on_commit == self._on_commit:
            committer.on_commit = self._previous_hook

    async def aclose(self) -> None:
        """Stop listening and unhook from the committer. Safe to call more than once.

        A scrape already being answered finishes on its own thread; one that
        stalls is hung up on after the request timeout.
        """
        if self._closed:
            return
        self._closed = True
        self._unhook()
        if self._httpd is not None:
            # shutdown() waits for the serving thread to notice; meanwhile the
            # loop stays free to answer that thread's last reads.
            await asyncio.to_thread(self._httpd.shutdown)
            self._httpd.server_close()
        self._log.info("close_resource", result="success", resource="metrics")


async def serve_metrics(
    server: Server, host: str, port: int, *, request_timeout: float = REQUEST_TIMEOUT
) -> MetricsServer:
    """Serve ``server``'s metrics at ``http://host:port/metrics`` until ``aclose()``.

    Args:
        server: the lottery server to report on (started or not).
        host, port: where to listen; port 0 picks a free one (see ``.port``).
        request_timeout: seconds a scraper has to send its request and take the answer.

    Raises:
        ConfigError: prometheus_client is not installed.
        OSError: the address could not be listened on (e.g. the port is taken).
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING_DEPENDENCY) from None
    metrics = MetricsServer(server, asyncio.get_running_loop())
    # In a thread: binding looks the host up (HTTPServer even asks for its
    # fully qualified name), which may wait on DNS.
    await asyncio.to_thread(metrics._start, host, port, request_timeout)
    metrics._hook()  # only once listening, so a taken port leaves no hook behind
    get_logger().info("metrics", result="success", host=host, port=metrics.port)
    return metrics
