"""Prometheus metrics for ``lottery server --http-port`` (or its old name ``--metrics-port``).

`Metrics` renders the round's figures in Prometheus' text format (or
OpenMetrics, if the scraper asks for it); the server's one HTTP listener
(`lottery.web`) answers ``GET /metrics`` with them, so a dashboard can follow
a round while it runs: bets and
batches stored and refused, commits and how long they take, how many batches
each commit groups, agencies connected and done, and the draw.

How the figures are gathered, and why:

- Counters and gauges are read from the server's state at scrape time by a
  custom collector: the server already keeps them, so there is no polling
  loop and no second copy that could drift. Every read of the server's state
  is in `read_server`, at the top of this module, and nowhere else.
- Commit latency and batches per commit are distributions, not state, so
  they are histograms fed by the committer's ``on_commit`` hook (chained to
  any previous hook, and unhooked by `Metrics.close`).

A scrape is rendered on a worker thread (`Metrics.render`): the process
collector reads files under /proc, which the event loop must not wait on.
Nothing the server's collector reads needs an await (the connection gauges
count the live connections in memory rather than asking the store), so that
thread only asks the event loop to run `read_server`, a few microseconds.

Each `Metrics` has its own ``CollectorRegistry``, never the global one, so
several servers in one process (tests, benchmarks) do not collide.
prometheus_client is imported only when metrics are made: it is an optional
extra (``pip install 'lottery[metrics]'``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError
from .log import get_logger

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.metrics_core import Metric

    from .committer import Committer
    from .server import Server
    from .web import HttpServer

__all__ = [
    "MISSING_DEPENDENCY",
    "Metrics",
    "ServerFigures",
    "make_metrics",
    "read_server",
    "serve_metrics",
]

MISSING_DEPENDENCY = "/metrics needs prometheus_client: pip install 'lottery[metrics]'"

#: Seconds a scrape waits for the event loop to read the server's state.
READ_TIMEOUT = 2.0

# A commit takes from well under a millisecond (sync=OFF, few bets) to tens of
# milliseconds (an fsync'd group of 8192 bets); a slow disk shows past that.
COMMIT_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
# One batch per commit means no grouping; hundreds mean many agencies share
# each fsync (a group holds at most max_group_bets bets, 8192 by default).
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

    Runs on the server's event loop (see `Metrics._read`), which is the
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


# -- the figures' registry ---------------------------------------------------------------------


class Metrics:
    """One server's Prometheus registry, fed by its state and its commits. Made by `make_metrics`.

    Attributes:
        registry: this server's own prometheus_client registry.
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
        self._previous_hook: CommitHook | None = None
        self._hooked = False
        self._closed = False

    def hook(self) -> None:
        """Observe the server's commits (once it is started: it has no committer before)."""
        if self._hooked or self._closed:
            return
        # Chain, don't replace: someone else (a benchmark, a second endpoint)
        # may observe commits too.
        committer = committer_of(self._server)
        self._previous_hook = committer.on_commit
        committer.on_commit = self._on_commit
        self._hooked = True

    async def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition for a scraper whose Accept header is ``accept``: (body, content type)."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return await asyncio.to_thread(encoder, self.registry), content_type

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

    def close(self) -> None:
        """Unhook from the committer. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if not self._hooked:
            return
        committer = committer_of(self._server)
        # If another hook was chained after ours, it still calls ours, which
        # then only passes commits on (``_closed``); else restore the previous.
        if committer.on_commit == self._on_commit:
            committer.on_commit = self._previous_hook


def make_metrics(server: Server) -> Metrics:
    """``server``'s metrics, on the running loop; `Metrics.hook` once the server is started.

    Raises:
        ConfigError: prometheus_client is not installed.
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING_DEPENDENCY) from None
    return Metrics(server, asyncio.get_running_loop())


async def serve_metrics(
    server: Server, host: str, port: int, *, request_timeout: float | None = None
) -> HttpServer:
    """The server's HTTP listener with metrics required: ``http://host:port/metrics``.

    The same listener serves the round's page and ``/status.json`` (see
    `lottery.web.serve_http`, which this calls).

    Raises:
        ConfigError: prometheus_client is not installed.
        OSError: the address could not be listened on (e.g. the port is taken).
    """
    from .web import REQUEST_TIMEOUT, serve_http

    return await serve_http(
        server,
        host,
        port,
        metrics=make_metrics(server),
        request_timeout=REQUEST_TIMEOUT if request_timeout is None else request_timeout,
    )
