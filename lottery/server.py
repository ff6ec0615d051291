"""The central server: the listener, its connections, and shutdown.

Entry point: `Server` (``async with Server(config) as server: await
server.serve_forever()``). Its pieces:

- `Server` opens the store, builds the `Round` from it, listens, gives each
  connection a slot (`Admission`, lottery/admission.py: an unauthenticated
  pool with a per-address cap, and the agencies' pool) or refuses it with an
  error frame, runs the TLS handshake itself (inside the slot and the
  handshake deadline), and then one `Handler` per connection; it owns the
  connections and the shutdown;
- the `Round` (lottery/round.py) owns everything the connections share: the
  barrier, the draw, who speaks for each agency, progress, counters;
- a `Handler` gets the round and the config, never the server. Until it is
  admitted as an agency, the whole handler runs under the handshake deadline
  (whatever it is doing). It runs two tasks in a `TaskGroup`: the reader
  turns bytes into requests (through the sans-I/O `ServerProtocol`) and
  queues each; the writer answers them in
  order (awaiting the batch's commit, the draw...), turns each answer into
  bytes with `ServerProtocol.send`, writes them, and closes the connection
  when the protocol says so. Acks go out in the order batches came in while
  the reader keeps pipelining;
- the `Committer` group-commits batches; the store keeps them: `ThreadedStore`
  over `SQLiteStore` in ``--data-dir`` by default, or, with ``--store
  postgresql://...``, a `PostgresStore` that several servers share.

Shutdown (`close()`, plain and safe to call twice; `wait_closed()` waits):
stop accepting, wake every winners query, stop each reader, let each writer
flush the batches already in flight for up to ``timeout_graceful_shutdown``
seconds, cancel what is left, then commit what is pending and close the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hmac
import os
import resource
import secrets
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .admission import Admission, Ticket
from .auth import load_operator_token, load_secrets
from .committer import Committer
from .config import ServerConfig
from .errors import ConfigError, ErrorCode, ProtocolError, StoreError
from .fdlimit import raise_nofile_limit
from .log import get_logger, hot_line, line_logger
from .protocol import (
    NONCE_SIZE,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Batch,
    Challenge,
    Commit,
    Done,
    DrawInfo,
    DrawQuery,
    Error,
    Hello,
    Message,
    NotReady,
    Receipt,
    RejectedBatch,
    Reveal,
    RevealWanted,
    ServerProtocol,
    SingleBet,
    Status,
    StatusQuery,
    Welcome,
    Winners,
    WinnersQuery,
    auth_mac,
    operator_proof,
)
from .ratelimit import StatusSnapshots, TokenBucket
from .round import Round, Superseded, WinnersWait, shared_store
from .store import AsyncStore, Outcome, SQLiteStore, Store, ThreadedStore

__all__ = ["Handler", "Server"]

READ_SIZE = 65536
#: Replies a connection may have pending before its reader stops reading. This
#: bounds the batches one agency has waiting for a commit (backpressure).
MAX_PENDING_REPLIES = 64
CLOSE_TIMEOUT = 1.0
LINGER = 0.5  # seconds a closing connection may still drain what the peer sends
#: Most missing agencies a NOT_READY names (it says how many there are in all).
MAX_LISTED_MISSING = 100
#: Descriptors kept out of the connection limit: the store's files, the log,
#: the metrics listener, and the connections being refused at any moment.
RESERVED_FDS = 128
#: Refusals being written at once; past that a refused connection is closed
#: without its ERROR frame (each one holds a descriptor while it is written).
MAX_REFUSALS = 64


class Server:
    """The lottery's central server. See the module docstring.

    Args:
        config: the settings.
        open_store: builds a blocking store (default: `SQLiteStore` in
            ``config.data_dir``); called on the store's own thread. Unused
            when ``config.store`` names a PostgreSQL database.
        store: an open `AsyncStore` to serve instead (a `SharedStore` makes
            this server one of several over one round); the server closes it.
    """

    def __init__(
        self,
        config: ServerConfig,
        open_store: Callable[[], Store] | None = None,
        *,
        store: AsyncStore | None = None,
    ) -> None:
        self.config = config
        self._given_store = store
        self._log = get_logger()
        self._open_store = open_store or functools.partial(
            SQLiteStore,
            config.data_dir,
            config.agencies,
            config.winning_number,
            config.sync,
            exclusive=True,
            draw_mode=config.draw,
        )
        self._store: AsyncStore | None = None
        self._committer: Committer | None = None
        self._round: Round | None = None
        #: agency → secret, from --secrets; None: the server runs open, as tp0 did.
        self.secrets: dict[int, bytes] | None = None
        self.operator_token: bytes | None = None
        self._handlers: set[Handler] = set()
        self._listener: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self.admission = Admission(
            config.connection_limit, config.unauthenticated_limit, config.per_address_limit
        )
        self._refusing = 0
        self._snapshots: StatusSnapshots | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    # -- life cycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, build the round from it, and start listening."""
        cfg = self.config
        if cfg.secrets_file:
            self.secrets = load_secrets(cfg.secrets_file, cfg.agencies)
            self.operator_token = load_operator_token(cfg.secrets_file)
        tls = self._tls = _tls_context(cfg)
        nofile = self._size_limits()
        store = self._store = await self._open()
        try:
            committer = self._committer = Committer(store, max_group_bets=cfg.max_group_bets)
            committer.start()
            self._round = await Round.load(
                store,
                committer,
                cfg.agencies,
                draw_deadline=cfg.draw_deadline,
                fault_draw_delay=cfg.fault_draw_delay,
                winning_number=cfg.winning_number,
                reveal_deadline=cfg.reveal_deadline,
            )
            round_ = self._round
            round_.open_connections = lambda: len(self._handlers)
            self._snapshots = StatusSnapshots(
                round_.status, bucket=TokenBucket(cfg.limit_status_global_rate)
            )
            # TLS is not asyncio's to do here: its handshake runs in `_accept`,
            # after the connection has a slot and under its handshake deadline.
            self._listener = await asyncio.get_running_loop().create_server(
                self._stream_protocol, cfg.host, cfg.port, backlog=cfg.listen_backlog
            )
            shared = shared_store(store)
            if shared is not None:  # named before any agency is admitted
                shared.server_id = cfg.server_id or f"{_public_host(cfg.host)}:{self.port}"
        except BaseException:  # e.g. the port is taken: close the store and its thread
            if self._round is not None:
                self._round.shutdown()
                await self._round.wait_closed()
            if self._committer is not None:
                await self._committer.close()
            await store.aclose()
            raise
        self._log.info(
            "config",
            result="success",
            ronda=self._round.round_id,
            port=self.port,
            listen_backlog=cfg.listen_backlog,
            logging_level=cfg.log_level,
            agencies=cfg.agencies,
            data_dir=cfg.data_dir,
            store=_safe_dsn(cfg.store) if cfg.store else "sqlite",
            sync=cfg.sync,
            agencies_done=len(self._round.barrier.done),
            drawn=self._round.drawn,
            auth="hmac" if self.secrets is not None else "none",
            tls=tls is not None,
            limit_connections=self.admission.total,
            limit_unauthenticated=self.admission.unauthenticated,
            limit_per_address=self.admission.per_address,
            nofile_soft=nofile[0],
            nofile_hard=nofile[1],
        )
        if self._round.drawn:
            # Loudly: a leftover data directory must not pass off an old round as this one.
            self._log.warning(
                "ronda_terminada",
                result="in_progress",
                ronda=self._round.round_id,
                detalle=f"{_safe_dsn(cfg.store) if cfg.store else cfg.data_dir} holds a round "
                "whose draw is already made: this server only answers its winners; for a new "
                "round, start with --new-round (or, with --store, another database)",
            )
        if self.secrets is None:
            self._log.warning(
                "auth",
                result="in_progress",
                modo="abierto",
                detalle="no --secrets file: any client may speak as any agency, as in tp0",
            )

    async def _open(self) -> AsyncStore:
        """The round's store: PostgreSQL with ``--store``, else SQLite on its own thread."""
        cfg = self.config
        if self._given_store is not None:
            return self._given_store
        if not cfg.store:
            return await ThreadedStore.open(self._open_store)
        from .store.postgres import PostgresStore  # asyncpg: only for this store

        return await PostgresStore.open(
            cfg.store,
            agencies=cfg.agencies,
            winning_number=cfg.winning_number,
            draw_mode=cfg.draw,
            # Named again once the port is bound (`start`): what `lottery status`
            # shows as the server an agency is connected to.
            server_id=f"{socket.gethostname()}:{cfg.port or os.getpid()}",
        )

    def _size_limits(self) -> tuple[int, int]:
        """Fit the connection limit to the descriptors this process may open.

        Returns the (soft, hard) RLIMIT_NOFILE (-1: unlimited).
        """
        wanted = self.admission.total
        soft, hard = raise_nofile_limit(wanted + RESERVED_FDS)
        if soft != resource.RLIM_INFINITY and soft - RESERVED_FDS < wanted:
            # Past the descriptors, accept() fails and asyncio leaves the peer
            # waiting in the backlog, told nothing: refuse out loud instead.
            room = max(soft - RESERVED_FDS, self.config.agencies, 1)
            # Room kept for every agency and a reconnect of each, as by default;
            # if even that does not fit, half of what one slot per agency leaves.
            agencies = self.config.agencies
            unauthenticated = min(
                self.admission.unauthenticated,
                max(room - 2 * agencies, (room - agencies) // 2, 1),
            )
            self.admission = Admission(room, unauthenticated, self.admission.per_address)
            self._log.warning(
                "config",
                result="in_progress",
                motivo=f"only {soft} open files allowed: connection limit {wanted} -> {room}",
                nofile_soft=soft,
                nofile_hard=hard,
            )
        return (-1 if soft == resource.RLIM_INFINITY else soft), (
            -1 if hard == resource.RLIM_INFINITY else hard
        )

    @property
    def port(self) -> int:
        """The port listened on (useful with port 0)."""
        assert self._listener is not None, "the server is not started"
        return int(self._listener.sockets[0].getsockname()[1])

    @property
    def round(self) -> Round:
        """The round this server serves (after `start`)."""
        assert self._round is not None, "the server is not started"
        return self._round

    @property
    def store(self) -> AsyncStore:
        """The open store (after `start`); tests inject faults through ``store.call``
        (a `ThreadedStore`'s)."""
        assert self._store is not None, "the server is not started"
        return self._store

    @property
    def committer(self) -> Committer:
        """The group committer (after `start`); metrics observe its commits."""
        assert self._committer is not None, "the server is not started"
        return self._committer

    @property
    def connections(self) -> int:
        """Connections open now (handshake done or not)."""
        return len(self._handlers)

    def status(self) -> dict[str, Any]:
        """The round's state, for STATUS replies, ``lottery status`` and metrics."""
        return self.round.status()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    async def serve_forever(self) -> None:
        """Serve until `close()` has been called and shutdown has finished."""
        await self._closed.wait()

    def close(self) -> None:
        """Start a graceful shutdown. Plain, and safe to call more than once."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(
                self._shutdown(), name="lottery-shutdown"
            )

    async def wait_closed(self) -> None:
        """Wait until a shutdown started by `close()` has finished."""
        if self._shutdown_task is not None:
            await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        log = self._log
        log.info("shutdown", result="in_progress", connections=len(self._handlers))
        if self._listener is not None:
            self._listener.close()
            log.info("close_resource", result="success", resource="listener")
        round_ = self.round
        round_.shutdown()
        handlers = list(self._handlers)
        for handler in handlers:
            handler.stop_reading()
        tasks = [h.task for h in handlers if h.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.config.timeout_graceful_shutdown)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=CLOSE_TIMEOUT)
                log.warning("shutdown", result="in_progress", cancelled_connections=len(late))
        committer = self.committer
        await committer.close()
        await round_.wait_closed()
        await self.store.aclose()
        log.info("close_resource", result="success", resource="store")
        latencies = round_.stats.ack_latencies
        log.info(
            "commits",
            result="success",
            commits=committer.commits,
            batches=committer.batches_committed,
            batches_per_commit=round(committer.batches_committed / max(committer.commits, 1), 1),
        )
        log.info(
            "ack_latency",
            result="success",
            batches=latencies.count,
            p50_ms=round(latencies.percentile(50) * 1000, 2),
            p99_ms=round(latencies.percentile(99) * 1000, 2),
        )
        self._closed.set()
        log.info("shutdown", result="success")

    # -- connections -------------------------------------------------------------------

    def _stream_protocol(self) -> asyncio.StreamReaderProtocol:
        """What `asyncio.start_server` would make, holding the first bytes back under TLS."""
        reader = asyncio.StreamReader()
        if self._tls is None:
            return asyncio.StreamReaderProtocol(reader, self._accept)
        return _UnreadUntilTLS(reader, self._accept)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Counted at once, before any TLS handshake: a peer that connects and
        # never finishes it holds a slot like any other, for as long.
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        ticket: Ticket | str
        if self._shutdown_task is not None:
            ticket = "the server is shutting down"
        else:
            ticket = self.admission.enter(address)
        if isinstance(ticket, str):
            await self._refuse(reader, writer, ticket)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout_handshake
        ticket.on_evict = writer.transport.abort
        try:
            if self._tls is not None:
                try:
                    async with asyncio.timeout_at(deadline):
                        await writer.start_tls(self._tls)
                except (OSError, TimeoutError, ssl.SSLError, ConnectionError) as exc:
                    # Said, so an operator can tell a client without --tls-ca
                    # (or one speaking plain TCP) from a server that is down.
                    self._log.warning(
                        "tls", result="fail", ip=address, error=str(exc) or type(exc).__name__
                    )
                    writer.transport.abort()
                    return
            handler = Handler(
                self.round,
                self.config,
                self.secrets,
                reader,
                writer,
                ticket=ticket,
                snapshots=self._snapshots,
                operator_token=self.operator_token,
                deadline=deadline,
            )
            ticket.on_evict = handler.abort
            self._handlers.add(handler)
            try:
                await handler.run()
            finally:
                self._handlers.discard(handler)
        finally:
            ticket.release()

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, why: str
    ) -> None:
        """Tell a connection there is no slot for it (ERROR), then close it."""
        code = (
            ErrorCode.SHUTTING_DOWN
            if self._shutdown_task is not None
            else ErrorCode.TOO_MANY_CONNECTIONS
        )
        self._log.warning("accept_connections", result="fail", motivo=why)
        if self._refusing >= MAX_REFUSALS:
            writer.transport.abort()  # each refusal holds a descriptor: bound them
            return
        self._refusing += 1
        try:
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError, ConnectionError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    if self._tls is not None:
                        await writer.start_tls(self._tls)
                    writer.write(ServerProtocol().send(Error(code, why)))
                    await writer.drain()
            await _close_writer(writer, reader)
        finally:
            self._refusing -= 1


def _safe_dsn(dsn: str) -> str:
    from .store.postgres import safe_dsn  # asyncpg (30 ms of start-up): only with --store

    return safe_dsn(dsn)


class _UnreadUntilTLS(asyncio.StreamReaderProtocol):
    """A connection that reads nothing until `_accept` starts its TLS handshake.

    A client's ClientHello that arrived before `start_tls` would be read as
    plain bytes into the StreamReader, out of the TLS layer's reach, and the
    handshake would then wait for it until the deadline (a race a loaded
    machine lost about one time in five). Paused, the bytes wait in the
    kernel; `start_tls` resumes reading once the TLS layer is in place.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()


def _public_host(host: str) -> str:
    """The host part of a server id: this machine's name when listening on every address."""
    return host if host not in ("", "0.0.0.0", "::") else socket.gethostname()


def _tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if not (config.tls_cert or config.tls_key):
        return None
    if not (config.tls_cert and config.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-cert/--tls-key: {exc}") from None
    return context


async def _close_writer(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader | None = None
) -> None:
    if reader is not None and writer.can_write_eof() and not writer.transport.is_closing():
        # A lingering close: say we are done writing, then discard what the
        # peer still sends, briefly. Closing with unread bytes makes the
        # kernel answer with a reset, which can destroy the ERROR frame we
        # just wrote before the peer reads it.
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            writer.write_eof()
            async with asyncio.timeout(LINGER):
                while await reader.read(READ_SIZE):
                    pass
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
    except TimeoutError:
        # A peer that does not read keeps close() waiting to flush: drop it.
        writer.transport.abort()
    except OSError:
        pass


@dataclass(slots=True)
class _Submitted:
    """A batch (or single bet) handed to the commit queue, waiting for its outcome."""

    request: Batch | SingleBet
    future: asyncio.Future[Any]
    received: float  # loop time the read that brought it returned, for the ack latency


#: What the reader queues for the writer, one per reply, in arrival order: the
#: request itself, a submitted batch, or an ERROR decided while reading.
_Request = (
    Hello
    | Auth
    | Done
    | WinnersQuery
    | StatusQuery
    | RejectedBatch
    | _Submitted
    | Error
    | DrawQuery
    | Commit
    | Reveal
)
_END = None  # the reader has stopped: the writer ends after what is queued


class Handler:
    """One agency connection: a reader task and a writer task.

    It holds the round and the config, not the server: everything it shares
    with other connections goes through the `Round`.

    The reader may run up to `MAX_PENDING_REPLIES` requests ahead of the
    writer; a semaphore (not the queue) enforces that bound, so the reader's
    final end marker always fits and never blocks. A HELLO or AUTH is the
    exception: the reader waits until the writer has answered it, since what
    the connection may send next depends on that answer.
    """

    def __init__(
        self,
        round_: Round,
        config: ServerConfig,
        agency_secrets: dict[int, bytes] | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        ticket: Ticket | None = None,
        snapshots: StatusSnapshots | None = None,
        operator_token: bytes | None = None,
        deadline: float | None = None,
    ) -> None:
        self._round = round_
        self._config = config
        self._secrets = agency_secrets
        self._ticket = ticket
        self._snapshots = snapshots or StatusSnapshots(
            round_.status, TokenBucket(config.limit_status_global_rate)
        )
        self._status_bucket = TokenBucket(config.limit_status_rate)
        self._status_written = asyncio.Event()  # no STATUS answer in flight
        self._status_written.set()
        #: The proof a STATUS_QUERY must carry for the full view (see operator_proof).
        self._operator_proof = operator_token and operator_proof(operator_token)
        #: Loop time by which the connection must be admitted, whatever it is doing.
        self._deadline = deadline
        self._handshake_timer: asyncio.Timeout | None = None
        self._peer_gone = asyncio.Event()  # the reader saw EOF or an error
        self._aborted = False
        self._reader = reader
        self._writer = writer
        self._protocol = ServerProtocol()
        self._challenge: tuple[int, bytes] | None = None  # (agency, nonce) awaiting AUTH
        #: Requests read, in arrival order, for the writer. Bounded by ``_slots``
        #: (plus the reader's end marker); a deque, so the writer can look at the
        #: next one without taking it.
        self._replies: collections.deque[_Request | None] = collections.deque()
        self._replies_added = asyncio.Event()
        self._handshake_answered = asyncio.Event()
        self._slots = asyncio.Semaphore(MAX_PENDING_REPLIES)
        self._unanswered = 0  # replies queued or being answered, not yet written
        self._last_reply = 0.0  # loop time of the last reply written
        self._reader_task: asyncio.Task[None] | None = None
        #: The idle and handshake deadlines of reads (see `_read`).
        self._watchdog: asyncio.TimerHandle | None = None
        self._read_deadline = 0.0
        self._reading: asyncio.Task[Any] | None = None  # the task blocked in a read, if any
        self._read_expired = False
        #: Loop time the last read returned: a batch's ack latency starts there,
        #: so its wait for room in the commit queue (and for a reply slot) counts.
        self._read_at = 0.0
        self.task: asyncio.Task[Any] | None = None
        self.agency: int | None = None
        self._epoch = 0  # the fencing token the round gave this connection (store guarantee 7)
        #: The agency asked how the round is drawn (DRAW_QUERY): it speaks the
        #: draw's frames. One that never does cannot take part in a random draw.
        self._draw_aware = False
        self._commit_refused = False  # another commitment is on record: it cannot reveal
        peer = writer.get_extra_info("peername")
        self._ip = peer[0] if peer else "?"
        # Its lines are written per connection (10,000 in a round): the cheap path.
        self._log = line_logger(ip=self._ip)
        #: Writes the per-batch ``apuesta_recibida`` line cheaply (lottery/log.py
        #: `hot_line`); set at the first stored batch, if the log allows it.
        self._batch_line: Callable[[int], None] | None = None

    def __repr__(self) -> str:
        return (
            f"<Handler agency={self.agency} state={self._protocol.state.value} "
            f"pending={len(self._replies)}>"
        )

    def stop_reading(self) -> None:
        """Read no more requests (shutdown, or a newer connection of this agency)."""
        if self._reader_task is not None:
            self._reader_task.cancel()

    def abort(self) -> None:
        """Drop the connection now (its slot went to a newcomer); nothing is written.

        The reader then sees the connection lost and the handler ends as for
        any peer that hung up (and the handshake deadline bounds the rest).
        """
        self._aborted = True
        self._log.warning("accept_connections", result="fail", motivo="evicted")
        self._writer.transport.abort()

    async def run(self) -> None:
        self.task = asyncio.current_task()
        self._log.info("accept_connections", result="success")
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.time() + self._config.timeout_handshake
        try:
            # The handshake deadline holds whatever the connection is doing
            # (a reader blocked on reply slots, a writer blocked on a peer that
            # never reads): the whole handler runs under it until admitted.
            async with asyncio.timeout_at(self._deadline) as self._handshake_timer:
                if self.agency is not None:  # admitted before the timer existed
                    self._handshake_timer.reschedule(None)
                async with asyncio.TaskGroup() as tg:
                    self._reader_task = tg.create_task(self._read_loop())
                    tg.create_task(self._write_loop())
        except TimeoutError:
            self._log.warning("handshake", result="fail", motivo="timeout")
            self._writer.transport.abort()  # what is unsent may never be read
        finally:
            if self.agency is not None:
                self._round.leave(self.agency, self)
            # Linger only after a closing ERROR: that is when the peer may
            # still be sending and must not lose the frame that says what
            # went wrong.
            linger = self._protocol.close_expected() and not self._aborted
            await _close_writer(self._writer, self._reader if linger else None)
            self._log.info(
                "close_resource", result="success", resource="connection", agencia=self.agency
            )

    # -- reader --------------------------------------------------------------------------

    async def _queue(self, request: _Request) -> None:
        await self._slots.acquire()
        self._unanswered += 1
        self._put(request)

    def _put(self, request: _Request | None) -> None:
        self._replies.append(request)
        self._replies_added.set()

    async def _next_request(self) -> _Request | None:
        while not self._replies:
            self._replies_added.clear()
            await self._replies_added.wait()
        return self._replies.popleft()

    async def _read_loop(self) -> None:
        idle = self._config.timeout_idle
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    data = await self._read(loop.time() + idle)
                except TimeoutError:
                    if self.agency is None:
                        # Until it says who it is, `run`'s handshake timer holds
                        # the whole connection: a peer that stays silent (or drips
                        # a byte a second) cannot keep a slot for long.
                        continue
                    # Not idle while a request is unanswered (e.g. a winners
                    # query waiting for the draw, already off the queue), nor
                    # until the peer has had `idle` seconds after the last reply.
                    since_reply = loop.time() - self._last_reply
                    if self._unanswered or since_reply < idle:
                        continue
                    self._log.info("idle_timeout", result="success", agencia=self.agency)
                    return
                if not data:
                    self._peer_gone.set()
                    self._protocol.receive_eof()
                    return
                self._read_at = loop.time()
                self._protocol.receive_data(data)
                if not await self._handle_requests():
                    return
        except ProtocolError as exc:
            self._log.warning("protocolo", result="fail", agencia=self.agency, error=str(exc))
            await self._queue(Error(exc.code, str(exc)))
        except OSError:
            self._peer_gone.set()  # the peer went away; nothing of it is half-stored
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._put(_END)

    async def _read(self, deadline: float) -> bytes:
        """What the peer sent next; TimeoutError if nothing came by ``deadline`` (loop time).

        Like ``asyncio.timeout`` around the read, without a new timer each time:
        one watchdog timer per connection, moved only when a deadline comes
        earlier than it (the handshake's), re-armed when it fires early. With
        10,000 connections a timer per read was a tenth of their CPU.
        """
        self._read_deadline = deadline
        watchdog = self._watchdog
        if watchdog is None or watchdog.when() > deadline:
            if watchdog is not None:
                watchdog.cancel()
            self._watchdog = asyncio.get_running_loop().call_at(deadline, self._on_watchdog)
        self._reading = asyncio.current_task()
        try:
            return await self._reader.read(READ_SIZE)
        except asyncio.CancelledError:
            task = self._reading
            if self._read_expired and task is not None:
                self._read_expired = False
                if task.uncancel() == 0:  # cancelled by the watchdog alone
                    raise TimeoutError from None
            raise
        finally:
            self._reading = None

    def _on_watchdog(self) -> None:
        self._watchdog = None
        if self._reading is None:
            return  # not reading now: the next read arms it again
        loop = asyncio.get_running_loop()
        if loop.time() < self._read_deadline:  # data came meanwhile: wait until the new deadline
            self._watchdog = loop.call_at(self._read_deadline, self._on_watchdog)
            return
        self._read_expired = True
        self._reading.cancel()

    async def _handle_requests(self) -> bool:
        """Queue every request buffered so far; False once the connection is to close."""
        today = self._round.today
        while (request := self._protocol.next_event(today)) is not None:
            if isinstance(request, Batch | SingleBet):
                assert self.agency is not None  # the protocol allows bets only after WELCOME
                refusal = self._round.refuse_bets(self.agency)
                if refusal is None and self._round.random and not self._draw_aware:
                    refusal = (
                        ErrorCode.BAD_VERSION,
                        (
                            "this round's draw is random: upgrade the agency "
                            "(it must commit to a nonce before betting; docs/DRAW.md)"
                        ),
                    )
                if refusal is not None:
                    code, why = refusal
                    message = f"{type(request).__name__} refused: {why}"
                    self._log.warning("protocolo", result="fail", error=message)
                    await self._queue(Error(code, message))
                    return False
                await self._submit(request)
            elif isinstance(request, Hello | Auth):
                self._handshake_answered.clear()
                await self._queue(request)
                await self._handshake_answered.wait()
                if self._protocol.close_expected():
                    return False
            elif isinstance(request, StatusQuery):
                await self._pace_status()
                await self._queue(request)
            elif isinstance(request, Reveal) and not self._round.barrier.opened:
                message = "REVEAL before betting closed"
                self._log.warning("protocolo", result="fail", agencia=self.agency, error=message)
                await self._queue(Error(ErrorCode.OUT_OF_ORDER, message))
                return False
            else:
                if isinstance(request, RejectedBatch):
                    self._log.warning(
                        "apuesta_invalida", result="fail", error=request.error().message
                    )
                if isinstance(request, DrawQuery):
                    self._draw_aware = True  # before any bet it sends next is read
                await self._queue(request)
        return True

    async def _pace_status(self) -> None:
        """Hold a STATUS_QUERY until the last answer is written and the rates allow one.

        One STATUS answer in flight per connection: a peer that asks and does
        not read stops being read (TCP backpressure), instead of piling up
        answers in memory. Then this connection's rate, then the server's.
        """
        await self._status_written.wait()
        self._status_written.clear()
        for bucket in (self._status_bucket, self._snapshots.bucket):
            delay = bucket.reserve()
            if delay:
                await asyncio.sleep(delay)

    async def _submit(self, request: Batch | SingleBet) -> None:
        assert self.agency is not None
        await self._slots.acquire()
        # Every connection shares one commit queue: when it is full, stop
        # reading; TCP then slows the agency down instead of memory filling up.
        records = request.records if isinstance(request, Batch) else (request.record,)
        await self._round.wait_for_room(len(records))
        self._unanswered += 1
        future = self._round.submit(
            self.agency, request.seq, records, request.input_rows, self._epoch
        )
        self._put(_Submitted(request, future, self._read_at))

    # -- writer --------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        idle = self._config.timeout_idle
        latencies = self._round.stats.ack_latencies
        replies = self._replies
        protocol = self._protocol
        writer = self._writer
        transport = writer.transport
        try:
            loop = asyncio.get_running_loop()
            while (request := await self._next_request()) is not _END:
                answer = await self._answer(request)
                if transport.is_closing():  # reset by the peer meanwhile
                    raise ConnectionResetError("the agency closed the connection")
                if isinstance(answer, tuple):  # a RECEIPT, then the WINNERS
                    data = b"".join(protocol.send(a) for a in answer)
                else:
                    data = protocol.send(answer)
                acked: list[_Submitted] = []
                if isinstance(request, _Submitted):
                    acked.append(request)
                    # The batches queued behind it whose commit is done too
                    # (one commit covers many) go out in the same write.
                    chunks = [data]
                    while (
                        replies
                        and isinstance(following := replies[0], _Submitted)
                        and following.future.done()
                        and not protocol.close_expected()
                    ):
                        replies.popleft()
                        chunks.append(protocol.send(self._answer_batch(following)))
                        acked.append(following)
                    if len(chunks) > 1:
                        data = b"".join(chunks)
                writer.write(data)
                if isinstance(request, Hello | Auth):
                    self._handshake_answered.set()
                if transport.get_write_buffer_size():
                    async with asyncio.timeout(idle):
                        await writer.drain()
                else:  # nothing to wait for: no timer (it raises if the peer is gone)
                    await writer.drain()
                self._last_reply = now = loop.time()
                if isinstance(request, StatusQuery):
                    self._status_written.set()
                for submitted in acked:
                    latencies.add(now - submitted.received)
                for _ in acked or (request,):
                    self._unanswered -= 1
                    self._slots.release()
                if protocol.close_expected():
                    break
        except (OSError, TimeoutError, RuntimeError):
            # The peer is gone or stopped reading: nothing more can reach it.
            # (uvloop raises RuntimeError for a write to a transport it closed.)
            pass
        # Nothing more will be written: the reader must not wait for answers.
        if self._reader_task is not None:
            self._reader_task.cancel()

    async def _answer(self, request: _Request) -> Message | tuple[Message, ...]:
        """The reply to ``request`` (awaiting its commit, the draw...)."""
        if isinstance(request, _Submitted):
            await request.future
            return self._answer_batch(request)
        if isinstance(request, Error):
            return request
        if isinstance(request, RejectedBatch):
            self._log.info("apuesta_recibida", result="fail", cantidad=request.count)
            self._round.stats.batches_refused += 1
            return request.error()
        if isinstance(request, Hello):
            return await self._answer_hello(request)
        if isinstance(request, Auth):
            return await self._answer_auth(request)
        if isinstance(request, Done):
            return await self._answer_done()
        if isinstance(request, StatusQuery):
            return Status(self._snapshots.text(full=self._full_status(request)))
        if isinstance(request, DrawQuery | Commit | Reveal):
            return await self._answer_draw(request)
        return await self._answer_winners()

    def _full_status(self, query: StatusQuery) -> bool:
        """Whether this peer may see per-agency progress, not just the round's summary."""
        if self._secrets is None or self.agency is not None:
            return True
        proof = self._operator_proof
        return bool(proof and query.token and hmac.compare_digest(query.token, proof))

    async def _answer_draw(self, request: DrawQuery | Commit | Reveal) -> Message:
        """DRAW_QUERY, COMMIT and REVEAL (docs/DRAW.md)."""
        round_ = self._round
        assert self.agency is not None
        if isinstance(request, DrawQuery):
            return DrawInfo(round_.draw_mode, round_.commitment)
        try:
            if isinstance(request, Commit):
                why = await round_.commit(self.agency, request.commitment)
            else:
                why = await round_.reveal(self.agency, request.nonce)
        except StoreError as exc:
            self._log.error("sorteo", result="fail", error=str(exc))
            return Error(ErrorCode.STORAGE, str(exc))
        if why is not None:
            self._commit_refused |= isinstance(request, Commit)
            return Error(ErrorCode.BAD_COMMITMENT, why)
        return Ack(0)

    def _answer_batch(self, submitted: _Submitted) -> Message:
        """The reply to a batch whose commit is done (its future has its result)."""
        log = self._log
        request = submitted.request
        result = submitted.future.result()
        count = len(request.records) if isinstance(request, Batch) else 1
        if result is Outcome.STORED:
            if isinstance(request, SingleBet):
                bet = request.record
                log.info("apuesta_almacenada", result="success", dni=bet[2], numero=int(bet[4]))
            elif (line := self._batch_line) is not None:
                line(count)
            else:
                # tp0's per-batch line, written thousands of times a second:
                # through the cheapest path where the log allows one.
                self._batch_line = line = hot_line(
                    "apuesta_recibida", "success", "cantidad", ip=self._ip, agencia=self.agency
                ) or (lambda n: log.info("apuesta_recibida", result="success", cantidad=n))
                line(count)
            return Ack(request.seq)
        if result is Outcome.DUPLICATE:
            log.debug("apuesta_duplicada", result="success", seq=request.seq)
            return Ack(request.seq)
        log.info("apuesta_recibida", result="fail", cantidad=count)
        self._round.stats.batches_refused += 1
        if result is Outcome.LATE:
            return Error(ErrorCode.DRAW_MADE, f"batch {request.seq} came after the draw")
        if result is Outcome.GAP:
            return Error(
                ErrorCode.BAD_SEQUENCE, f"batch {request.seq} skips ahead of the last stored"
            )
        if result is Outcome.STALE:
            # The agency was admitted again (here or on another server): nothing
            # this connection sends can be stored any more. Retry-able, and the
            # connection ends; the agency has moved on anyway.
            self.stop_reading()
            return Error(
                ErrorCode.STORAGE,
                f"batch {request.seq} was not stored: agency {self.agency} "
                "was admitted on a newer connection",
            )
        return Error(ErrorCode.STORAGE, f"batch {request.seq} was not stored: {result}")

    async def _answer_hello(self, hello: Hello) -> Message:
        agencies = self._config.agencies
        if hello.version != PROTOCOL_VERSION:
            why = f"protocol version {hello.version} is not spoken here; upgrade the agency"
            if hello.version > PROTOCOL_VERSION:
                why = f"protocol version {hello.version} is not spoken here; upgrade the server"
            return self._refuse(Error(ErrorCode.BAD_VERSION, why))
        if not 1 <= hello.agency <= agencies:
            return self._refuse(
                Error(ErrorCode.UNKNOWN_AGENCY, f"agency {hello.agency} is not in 1..{agencies}")
            )
        if self._secrets is not None:
            # Prove it: a fresh nonce, answered with an HMAC of the agency's secret.
            nonce = secrets.token_bytes(NONCE_SIZE)
            self._challenge = (hello.agency, nonce)
            return Challenge(nonce)
        return await self._admit(hello.agency)

    async def _answer_auth(self, auth: Auth) -> Message:
        assert self._challenge is not None  # the protocol allows AUTH only after CHALLENGE
        agency, nonce = self._challenge
        self._challenge = None
        secret = self._secrets.get(agency) if self._secrets else None
        if secret is None or not hmac.compare_digest(auth.mac, auth_mac(secret, agency, nonce)):
            return self._refuse(Error(ErrorCode.AUTH_FAILED, f"agency {agency}: wrong secret"))
        return await self._admit(agency)

    async def _admit(self, agency: int) -> Welcome | Error:
        try:
            self._epoch, progress = await self._round.admit(agency, self)
        except Superseded as exc:
            return self._refuse(Error(ErrorCode.OUT_OF_ORDER, str(exc)))
        except StoreError as exc:  # a shared store that is down: try again (elsewhere)
            self.stop_reading()
            return self._refuse(Error(ErrorCode.STORAGE, f"agency {agency}: {exc}"))
        self.agency = agency
        if self._ticket is not None:
            self._ticket.admit()  # to the agency pool: its unauthenticated slot is free
        if self._handshake_timer is not None:
            self._handshake_timer.reschedule(None)
        self._log = self._log.bind(agencia=agency)
        self._log.info(
            "handshake", result="success", last_seq=progress.last_seq,
            bets=progress.committed_bets, filas=progress.input_rows,
        )  # fmt: skip
        return Welcome(
            progress.last_seq,
            progress.committed_bets,
            progress.input_rows,
            self._round.today,
            progress.digest,
            self._round.round_id,
        )

    def _refuse(self, refusal: Error) -> Error:
        self._log.warning("handshake", result="fail", motivo=refusal.message)
        return refusal

    async def _answer_done(self) -> Message:
        assert self.agency is not None
        try:
            await self._round.agency_done(self.agency)
        except StoreError as exc:
            self._log.error("agencia_lista", result="fail", error=str(exc))
            return Error(ErrorCode.STORAGE, str(exc))
        return Ack(0)

    async def _answer_winners(self) -> Message | tuple[Message, ...]:
        assert self.agency is not None
        # The wait can be long (the draw): stop waiting as soon as the peer is
        # gone, so a peer that asks and hangs up holds its slot no longer.
        wait = asyncio.ensure_future(
            self._round.winners(
                self.agency, self._config.timeout_winners, can_reveal=not self._commit_refused
            )
        )
        gone = asyncio.ensure_future(self._peer_gone.wait())
        try:
            await asyncio.wait((wait, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not wait.done():
                wait.cancel()
        if not wait.done() or wait.cancelled():
            raise ConnectionResetError("the peer closed while waiting for the draw")
        winners = wait.result()
        if winners is WinnersWait.REVEAL:
            return RevealWanted()
        if winners is WinnersWait.NOT_READY:
            barrier = self._round.barrier
            # The first few only: with 10,000 agencies a full list in every
            # answer (and log line) to every early agency would be megabytes.
            listed = tuple(barrier.first_missing(MAX_LISTED_MISSING))
            self._log.info(
                "consulta_ganadores",
                result="in_progress",
                faltan=barrier.missing_count,
                primeras=" ".join(map(str, listed)),
            )
            return NotReady(barrier.missing_count, listed)
        if winners is WinnersWait.SHUTTING_DOWN:
            return Error(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
        self._log.info("consulta_ganadores", result="success", cant_ganadores=len(winners))
        try:
            receipt = await self._round.receipt(self.agency) if self._draw_aware else None
        except StoreError as exc:  # the store holds the fixed round's receipt: ask again
            return Error(ErrorCode.STORAGE, f"the receipt could not be read: {exc}")
        if receipt is not None:
            return Receipt(*receipt), Winners(winners)
        return Winners(winners)
