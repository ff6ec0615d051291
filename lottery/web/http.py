"""The server's one HTTP listener: the round's page, ``/status.json`` and ``/metrics``.

Entry point: `serve_http(server, host, port, ...)`, which `lottery server
--http-port` (or its old name ``--metrics-port``) calls; ``aclose()`` stops it.

Routes (GET and HEAD only):

- ``/``: the round's live page, one static file (``round.html``, package data);
- ``/status.json``: ``Round.status()``, the same document ``lottery status
  --json`` prints; with ``--secrets`` it needs the operator token;
- ``/metrics``: Prometheus' exposition (`lottery.metrics`), open to whoever
  reaches the bound host, as scrapers expect.

Why h11 on asyncio, and not prometheus_client's WSGI server on a thread (what
``--metrics-port`` used before): the page and ``/status.json`` read the round,
which only the event loop may touch. Served on the loop, a status costs one
synchronous call, with no thread hopping back to the loop; every connection
is a task this module owns, so the limits, timeouts and shutdown are ours and
the same as the lottery server's. h11 is the sans-I/O HTTP/1.1 parser our
protocol module is modelled on (pure Python, no dependencies, the one uvicorn
and httpcore use); the standard library's http.server is documented as not
meant for production. Only the scrape itself runs on a worker thread
(`lottery.metrics.Metrics.render`).

Why the page polls ``/status.json`` (once a second) rather than holding a
server-sent events stream: a status is a small snapshot made from memory, so a
poll costs next to nothing; polling needs no long-lived connections to bound
and close at shutdown; it picks up again by itself after a restart; and the
operator token travels in an ``Authorization`` header, which ``EventSource``
cannot send (it would need a cookie, and with it CSRF care).

Security: bound to 127.0.0.1 by default (``--http-host`` to expose it). While
bound to a loopback address, a request naming another host is refused, so a
web page elsewhere cannot read the round through DNS rebinding. With a secrets
file the round's data needs its ``operator:`` token (`lottery.auth`), compared
in constant time; a secrets file without one locks ``/status.json`` for
everyone. The page itself holds no data, and its Content-Security-Policy
allows only its own inline script and style (by hash) and requests to this
listener.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import resources
from typing import TYPE_CHECKING, Any

import h11

from ..log import get_logger

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..server import Server

__all__ = ["REQUEST_TIMEOUT", "Access", "HttpServer", "serve_http"]

#: Seconds a client has to send each whole request (a kept-alive connection
#: idle that long is closed too), and to take each answer.
REQUEST_TIMEOUT = 5.0
#: Open HTTP connections at most; past it new ones are closed at once.
MAX_CONNECTIONS = 64
#: Largest request head (request line and headers), bytes.
MAX_REQUEST_HEAD = 16 * 1024
#: Largest request body read (none is needed: GET and HEAD only).
MAX_REQUEST_BODY = 4096
READ_SIZE = 65536
PAGE = "round.html"
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


@dataclass(frozen=True)
class Access:
    """Who may read the round over HTTP.

    Attributes:
        required: a token is needed (the server runs with ``--secrets``).
        token: the operator token; None with ``required`` locks the round for everyone.
    """

    required: bool = False
    token: bytes | None = None

    def refuses(self, authorization: str) -> str | None:
        """Why a request with this ``Authorization`` header may not read the round, or None."""
        if not self.required:
            return None
        if self.token is None:
            return "the secrets file has no operator token (lottery make-secrets writes one)"
        scheme, _, value = authorization.strip().partition(" ")
        try:
            given = bytes.fromhex(value.strip()) if scheme.lower() == "bearer" else b""
        except ValueError:
            given = b""
        if given and hmac.compare_digest(given, self.token):
            return None
        return "the operator token is missing or wrong"


@dataclass
class Response:
    """What one request is answered."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Page:
    """The page's bytes and the Content-Security-Policy that allows exactly its inline code."""

    body: bytes
    policy: str

    @classmethod
    def load(cls) -> Page:
        html = resources.files(__package__).joinpath(PAGE).read_bytes()

        def hashes(tag: str) -> str:
            found = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), html, re.S)
            digests = (base64.b64encode(hashlib.sha256(code).digest()).decode() for code in found)
            return " ".join(f"'sha256-{d}'" for d in digests) or "'none'"

        policy = (
            "default-src 'none'; connect-src 'self'; img-src 'self' data:; "
            f"script-src {hashes('script')}; style-src {hashes('style')}; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        return cls(html, policy)


def _host_name(host_header: str) -> str:
    """The host part of a Host header: ``[::1]:80`` → ``::1``, ``a:80`` → ``a``."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


def _is_loopback(name: str) -> bool:
    if name.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HttpServer:
    """One server's HTTP listener. Made by `serve_http`; see the module docstring.

    Attributes:
        metrics: the Prometheus registry behind ``/metrics`` (None: not installed).
    """

    def __init__(
        self,
        server: Server,
        page: Page,
        *,
        metrics: Metrics | None,
        access: Access,
        request_timeout: float,
    ) -> None:
        self._server = server
        self._page = page
        self.metrics = metrics
        self._access = access
        self._request_timeout = request_timeout
        self._listener: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._started = False
        self._loopback_only = False
        self._closed = False
        self._log = get_logger()

    @property
    def port(self) -> int:
        """The port listened on (the one picked, when asked for port 0)."""
        assert self._listener is not None, "the HTTP listener is not started"
        return int(self._listener.sockets[0].getsockname()[1])

    async def _listen(self, host: str, port: int) -> None:
        self._listener = await asyncio.start_server(self._accept, host, port)
        self._loopback_only = all(
            _is_loopback(sock.getsockname()[0]) for sock in self._listener.sockets
        )

    def server_started(self) -> None:
        """The lottery server is started: serve its round, observe its commits."""
        self._started = True
        if self.metrics is not None:
            self.metrics.hook()

    # -- connections -----------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """asyncio's callback for each new connection: hand it to a task of ours, or refuse."""
        if self._closed or len(self._connections) >= MAX_CONNECTIONS:
            writer.close()
            return
        # Ours (not asyncio's callback task), in the set before it first runs,
        # so aclose() cancels every connection it may meet.
        task = asyncio.create_task(self._connection(reader, writer), name="lottery-http")
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
            await self._serve(conn, reader, writer)
        except (OSError, TimeoutError, h11.LocalProtocolError):
            pass  # the client went away, stalled, or the exchange cannot go on
        finally:
            writer.close()

    async def _serve(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer requests on one connection, in order, until either side closes it."""
        while True:
            try:
                async with asyncio.timeout(self._request_timeout):
                    request = await self._read_request(conn, reader)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    answer = Response(exc.error_status_hint, f"bad request: {exc}\n".encode())
                    await self._send(conn, writer, answer, head_only=False)
                return
            if request is None:
                return
            try:
                answer = await self._answer(request)
            except Exception as exc:  # a bug, or a scrape that failed: say so, keep serving
                self._log.error("http", result="fail", target=request.target, error=repr(exc))
                answer = Response(500, b"internal error: see the server's log\n")
            await self._send(conn, writer, answer, head_only=request.method == b"HEAD")
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # one side asked to close (or a body was left unread)
            conn.start_next_cycle()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> h11.Request | None:
        """The next whole request (its body read and dropped), or None at a clean close."""
        request = None
        body = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_SIZE))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += len(event.data)
                if body > MAX_REQUEST_BODY:
                    raise h11.RemoteProtocolError("the request body is too large", 413)
            elif isinstance(event, h11.EndOfMessage):
                return request
            else:  # ConnectionClosed (or PAUSED, which a server that reads on never sees)
                return None

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        answer: Response,
        *,
        head_only: bool,
    ) -> None:
        headers = [
            ("content-type", answer.content_type),
            ("content-length", str(len(answer.body))),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            *answer.headers,
        ]
        reason = HTTPStatus(answer.status).phrase.encode()
        data = conn.send(h11.Response(status_code=answer.status, headers=headers, reason=reason))
        data = data or b""
        if not head_only:
            data += conn.send(h11.Data(data=answer.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        async with asyncio.timeout(self._request_timeout):
            writer.write(data)
            await writer.drain()

    # -- routes ---------------------------------------------------------------------------

    async def _answer(self, request: h11.Request) -> Response:
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers
        }
        if self._loopback_only and not _is_loopback(_host_name(headers.get("host", "localhost"))):
            return Response(403, b"bound to loopback: ask for 127.0.0.1 or localhost\n")
        if request.method not in (b"GET", b"HEAD"):
            return Response(405, b"only GET and HEAD\n", headers=[("allow", "GET, HEAD")])
        path = request.target.decode("latin-1").partition("?")[0]
        if path in ("/", "/index.html"):
            return Response(
                200,
                self._page.body,
                "text/html; charset=utf-8",
                [("content-security-policy", self._page.policy), ("cache-control", "no-cache")],
            )
        if path == "/status.json":
            return self._status(headers.get("authorization", ""))
        if path == "/metrics":
            return await self._metrics(headers.get("accept", ""))
        return Response(404, b"not found: try /, /status.json or /metrics\n")

    def _status(self, authorization: str) -> Response:
        no_store = [("cache-control", "no-store")]
        refused = self._access.refuses(authorization)
        if refused is not None:
            return _json(401, {"error": refused}, [*no_store, ("www-authenticate", "Bearer")])
        if not self._started:
            return _json(503, {"error": "the server is starting"}, no_store)
        return _json(200, self._server.round.status(), no_store)

    async def _metrics(self, accept: str) -> Response:
        from ..metrics import MISSING_DEPENDENCY

        if self.metrics is None:
            return Response(503, f"{MISSING_DEPENDENCY}\n".encode())
        body, content_type = await self.metrics.render(accept)
        return Response(200, body, content_type)

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop listening, hang up every connection, unhook the metrics. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.metrics is not None:
            self.metrics.close()
        if self._listener is not None:
            self._listener.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._listener is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._request_timeout):
                    await self._listener.wait_closed()
        self._log.info("close_resource", result="success", resource="http")


def _json(status: int, document: dict[str, Any], headers: list[tuple[str, str]]) -> Response:
    body = json.dumps(document, separators=(",", ":")).encode()
    return Response(status, body, "application/json", headers)


async def serve_http(
    server: Server,
    host: str,
    port: int,
    *,
    metrics: Metrics | None = None,
    access: Access | None = None,
    started: bool = True,
    request_timeout: float = REQUEST_TIMEOUT,
) -> HttpServer:
    """Serve ``server``'s page, status and metrics at ``http://host:port/`` until ``aclose()``.

    Args:
        server: the lottery server to show.
        host, port: where to listen; port 0 picks a free one (see ``.port``).
        metrics: what ``/metrics`` serves (`lottery.metrics.make_metrics`);
            None answers 503 naming the extra to install.
        access: who may read the round (default: anyone who reaches the listener).
        started: whether ``server`` is started; if not, call
            `HttpServer.server_started` once it is (until then the status is 503).
        request_timeout: seconds a client has to send each request and take its answer.

    Raises:
        OSError: the address could not be listened on (e.g. the port is taken).
    """
    page = await asyncio.to_thread(Page.load)
    http = HttpServer(
        server, page, metrics=metrics, access=access or Access(), request_timeout=request_timeout
    )
    await http._listen(host, port)
    if started:
        http.server_started()
    get_logger().info("http", result="success", host=host, port=http.port)
    return http
