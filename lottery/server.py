"""The central server: accept agencies, store their bets, draw once, answer winners.

Entry point: `Server` (``async with Server(config) as server: await
server.serve_forever()``). Its pieces:

- the accept callback (`Server._accept`) refuses connections past the limit
  with an error frame, and otherwise runs one `Handler` per connection;
- a `Handler` runs two tasks in a `TaskGroup`: the reader turns bytes into
  messages (through the sans-I/O `ServerProtocol`) and queues a reply slot for
  each; the writer fills the slots in order (awaiting the batch's commit, the
  draw...) and writes them, so acks go out in the order batches came in while
  the reader keeps pipelining;
- the `Committer` group-commits batches on the store thread;
- the `DrawBarrier` opens when every agency is done, and the draw runs once.

Shutdown (`close()`, plain and safe to call twice; `wait_closed()` waits):
stop accepting, wake every winners query, stop each reader, let each writer
flush the batches already in flight for up to ``timeout_graceful_shutdown``
seconds, cancel what is left, then commit what is pending and close the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import functools
import hmac
import json
import secrets
import ssl
from dataclasses import dataclass
from typing import Any, NoReturn

from .auth import load_secrets
from .barrier import DrawBarrier
from .committer import Committer
from .config import ServerConfig
from .errors import ConfigError, DrawMade, InvalidBatch, OutOfOrder, ProtocolError, StoreError
from .log import get_logger
from .protocol import (
    NONCE_SIZE,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Batch,
    Challenge,
    Done,
    Error,
    ErrorCode,
    FrameType,
    Hello,
    Message,
    NotReady,
    Record,
    ServerProtocol,
    SingleBet,
    Status,
    StatusQuery,
    Welcome,
    Winners,
    WinnersQuery,
    auth_mac,
    encode,
)
from .store import Outcome, PendingBatch, SQLiteStore

__all__ = ["Handler", "Server"]

READ_SIZE = 65536
#: Replies a connection may have pending before its reader stops reading. This
#: bounds the batches one agency has waiting for a commit (backpressure).
MAX_PENDING_REPLIES = 64
CLOSE_TIMEOUT = 1.0
LINGER = 0.5  # seconds a closing connection may still drain what the peer sends


class LatencySample:
    """Latencies, kept up to a bound (every other one is dropped past it)."""

    def __init__(self, limit: int = 100_000) -> None:
        self.count = 0
        self._limit = limit
        self._stride = 1
        self._values: list[float] = []

    def add(self, seconds: float) -> None:
        self.count += 1
        if self.count % self._stride == 0:
            self._values.append(seconds)
            if len(self._values) >= self._limit:  # keep memory bounded on long runs
                del self._values[::2]
                self._stride *= 2

    def percentile(self, q: float) -> float:
        if not self._values:
            return 0.0
        ordered = sorted(self._values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


class Server:
    """The lottery's central server. See the module docstring.

    Args:
        config: the settings.
        open_store: builds the store (default: `SQLiteStore` in
            ``config.data_dir``); called on the store thread.
    """

    def __init__(self, config: ServerConfig, open_store: Any = None) -> None:
        self.config = config
        self._log = get_logger()
        self._committer = Committer(
            open_store
            or functools.partial(
                SQLiteStore, config.data_dir, config.agencies, config.winning_number, config.sync
            ),
            max_group_bets=config.max_group_bets,
        )
        self.barrier = DrawBarrier(config.agencies)
        self._winners: dict[int, tuple[str, ...]] = {}
        self.draw_seconds: float | None = None
        #: agency → secret, from --secrets; None: the server runs open, as tp0 did.
        self.secrets: dict[int, bytes] | None = None
        self._deadline_task: asyncio.Task[None] | None = None
        #: Since start: bets and batches stored, batches refused (for metrics).
        self.counters = dict.fromkeys(("bets_stored", "batches_stored", "batches_refused"), 0)
        self._handlers: set[Handler] = set()
        self._finishing: set[int] = set()  # agencies whose DONE is being stored
        #: Seconds from reading each batch to writing its ack (logged at shutdown).
        self.ack_latencies = LatencySample()
        self._listener: asyncio.Server | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    # -- life cycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, rebuild the barrier from it, and start listening."""
        cfg = self.config
        if cfg.secrets_file:
            self.secrets = load_secrets(cfg.secrets_file, cfg.agencies)
        tls = _tls_context(cfg)
        await self._committer.start()
        try:
            done = await self._committer.call(lambda s: s.done_agencies())
            drawn = await self._committer.call(lambda s: s.drawn())
            self.barrier = DrawBarrier(cfg.agencies, done, drawn)
            if drawn:
                winners = await self._committer.call(lambda s: s.winners())
                self._winners = {a: tuple(d) for a, d in winners.items()}
            elif self.barrier.opened:  # every agency was done when the server stopped
                await self.draw()
            self._listener = await asyncio.start_server(
                self._accept,
                cfg.host,
                cfg.port,
                backlog=cfg.listen_backlog,
                ssl=tls,
                ssl_handshake_timeout=cfg.timeout_handshake if tls else None,
            )
        except BaseException:  # e.g. the port is taken: close the store and its thread
            await self._committer.close()
            raise
        self._log.info(
            "config",
            result="success",
            port=self.port,
            listen_backlog=cfg.listen_backlog,
            logging_level=cfg.log_level,
            agencies=cfg.agencies,
            data_dir=cfg.data_dir,
            sync=cfg.sync,
            agencies_done=len(done),
            drawn=drawn,
            auth="hmac" if self.secrets is not None else "none",
            tls=tls is not None,
        )
        if self.secrets is None:
            self._log.warning(
                "auth",
                result="in_progress",
                modo="abierto",
                detalle="no --secrets file: any client may speak as any agency, as in tp0",
            )
        if cfg.draw_deadline and not self.barrier.drawn:
            self._deadline_task = asyncio.create_task(
                self._draw_at_deadline(cfg.draw_deadline), name="lottery-draw-deadline"
            )

    @property
    def port(self) -> int:
        """The port listened on (useful with port 0)."""
        assert self._listener is not None, "the server is not started"
        return int(self._listener.sockets[0].getsockname()[1])

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
        self.barrier.shutdown()
        if self._deadline_task is not None:
            self._deadline_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._deadline_task
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
        await self._committer.close()
        log.info("close_resource", result="success", resource="store")
        committer, latencies = self._committer, self.ack_latencies
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

    # -- shared round state ----------------------------------------------------------

    @property
    def committer(self) -> Committer:
        return self._committer

    async def status(self) -> dict[str, Any]:
        """The round's state, for STATUS replies, ``lottery status`` and metrics."""
        progress = await self._committer.call(lambda s: s.all_progress())
        connected = collections.Counter(h.agency for h in self._handlers if h.agency)
        barrier = self.barrier
        return {
            "agencies": self.config.agencies,
            "opened": barrier.opened,
            "drawn": barrier.drawn,
            "draw_seconds": self.draw_seconds,
            "connections": len(self._handlers),
            "agency": [
                {
                    "id": agency,
                    "committed_bets": progress.get(agency, (0, 0))[1],
                    "last_seq": progress.get(agency, (0, 0))[0],
                    "connected": connected[agency] > 0,
                    "done": agency in barrier.done,
                }
                for agency in range(1, self.config.agencies + 1)
            ],
        }

    def handlers_of(self, agency: int) -> list[Handler]:
        """The live connections that speak as ``agency``."""
        return [h for h in self._handlers if h.agency == agency]

    def winners_of(self, agency: int) -> tuple[str, ...]:
        return self._winners.get(agency, ())

    def is_done(self, agency: int) -> bool:
        """Whether ``agency`` said DONE (stored, or being stored): no more bets from it."""
        return agency in self._finishing or agency in self.barrier.done

    async def agency_done(self, agency: int) -> None:
        """Durably record ``agency`` as done; the last one to arrive runs the draw.

        From the moment DONE is read, the agency's bets are refused on every
        connection, and the ones handed over before it are let settle first:
        done means every bet before it is stored and none after it will be.
        """
        self._finishing.add(agency)
        try:
            await self._committer.settle(agency)
            await self._committer.call(lambda s: s.mark_done(agency))
        except BaseException:
            self._finishing.discard(agency)  # not done after all: it may try again
            raise
        self._log.info("agencia_lista", result="success", agencia=agency)
        if self.barrier.arrive(agency):
            if self.config.fault_draw_delay:  # fault injection for scripts/chaos.py only
                self._log.warning(
                    "sorteo", result="in_progress", demora=self.config.fault_draw_delay
                )
                await asyncio.sleep(self.config.fault_draw_delay)
            await self.draw()

    async def _draw_at_deadline(self, seconds: float) -> None:
        """--draw-deadline: when it passes, draw without the agencies still missing."""
        await asyncio.sleep(seconds)
        missing = self.barrier.close_early()
        if missing is None:  # every agency made it in time
            return
        self._log.warning(
            "sorteo",
            result="in_progress",
            motivo=f"draw deadline of {seconds:g} s passed",
            faltantes=" ".join(map(str, missing)),
        )
        await self.draw()

    async def draw(self) -> None:
        """Make the draw (once: the committer's lock and the store make sure)."""
        started = asyncio.get_running_loop().time()
        try:
            winners = await self._committer.draw()
        except StoreError as exc:
            self._log.error("sorteo", result="fail", error=str(exc))
            return
        if winners is None:  # made before: by another caller, or before a restart
            winners = await self._committer.call(lambda s: s.winners())
        else:
            self._log.info(
                "sorteo",
                result="success",
                cant_ganadores=sum(len(d) for d in winners.values()),
                segundos=round(asyncio.get_running_loop().time() - started, 3),
            )
            self.draw_seconds = asyncio.get_running_loop().time() - started
        self._winners = {a: tuple(d) for a, d in winners.items()}
        self.barrier.set_drawn()

    # -- connections -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        refusal: tuple[ErrorCode, str] | None = None
        if self._shutdown_task is not None:
            refusal = (ErrorCode.SHUTTING_DOWN, "the server is shutting down")
        elif len(self._handlers) >= self.config.connection_limit:
            refusal = (
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"the server is at its limit of {self.config.connection_limit} connections",
            )
        if refusal is not None:
            self._log.warning("accept_connections", result="fail", motivo=refusal[1])
            with contextlib.suppress(OSError, TimeoutError):
                writer.write(encode(Error(*refusal)))
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await writer.drain()
            await _close_writer(writer, reader)
            return
        handler = Handler(self, reader, writer)
        self._handlers.add(handler)
        try:
            await handler.run()
        finally:
            self._handlers.discard(handler)


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
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()


# What the reader queues for the writer, one per reply, in arrival order.
@dataclass(slots=True)
class _BatchReply:
    future: asyncio.Future[Any]
    seq: int
    count: int
    single: Record | None  # the bet, when it came alone (tp0 ej5)
    received: float  # loop time when the batch was read, for the ack latency


@dataclass(slots=True)
class _FixedReply:
    message: Message
    log_fail: int = 0  # a refused batch's bet count, logged as apuesta_recibida fail


class _DoneReply:
    pass


class _StatusReply:
    pass


class _WinnersReply:
    pass


_Reply = _BatchReply | _FixedReply | _DoneReply | _WinnersReply | _StatusReply
_END = None  # the reader has stopped: the writer ends after what is queued


class Handler:
    """One agency connection: a reader task and a writer task.

    The reader may run up to `MAX_PENDING_REPLIES` requests ahead of the
    writer; a semaphore (not the queue) enforces that bound, so the reader's
    final end marker always fits and never blocks.
    """

    def __init__(
        self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self._protocol = ServerProtocol(require_auth=server.secrets is not None)
        self._challenge: tuple[int, bytes] | None = None  # (agency, nonce) awaiting AUTH
        self._replies: asyncio.Queue[_Reply | None] = asyncio.Queue(MAX_PENDING_REPLIES + 1)
        self._sent_error = False  # an ERROR frame was written: linger when closing
        self._slots = asyncio.Semaphore(MAX_PENDING_REPLIES)
        self._unanswered = 0  # replies queued or being answered, not yet written
        self._last_reply = 0.0  # loop time of the last reply written
        self._reader_task: asyncio.Task[None] | None = None
        self.task: asyncio.Task[Any] | None = None
        self.agency: int | None = None
        peer = writer.get_extra_info("peername")
        self._log = get_logger(ip=peer[0] if peer else "?")

    def __repr__(self) -> str:
        return (
            f"<Handler agency={self.agency} state={self._protocol.state.value} "
            f"pending={self._replies.qsize()}>"
        )

    def stop_reading(self) -> None:
        """Shutdown: read no more requests; the writer finishes those in flight."""
        if self._reader_task is not None:
            self._reader_task.cancel()

    async def run(self) -> None:
        self.task = asyncio.current_task()
        self._log.info("accept_connections", result="success")
        try:
            async with asyncio.TaskGroup() as tg:
                self._reader_task = tg.create_task(self._read_loop())
                tg.create_task(self._write_loop())
        finally:
            # Linger only after an ERROR: that is when the peer may still be
            # sending and must not lose the frame that says what went wrong.
            await _close_writer(self._writer, self._reader if self._sent_error else None)
            self._log.info(
                "close_resource", result="success", resource="connection", agencia=self.agency
            )

    # -- reader --------------------------------------------------------------------------

    async def _queue(self, reply: _Reply) -> None:
        await self._slots.acquire()
        self._unanswered += 1
        self._replies.put_nowait(reply)

    async def _read_loop(self) -> None:
        config = self._server.config
        idle = config.timeout_idle
        loop = asyncio.get_running_loop()
        # Until it says who it is, a connection gets `timeout_handshake` in all:
        # a peer that connects and stays silent (or drips a byte a second)
        # cannot hold a connection slot for long.
        handshake_deadline = loop.time() + config.timeout_handshake
        try:
            while True:
                if self.agency is None:
                    wait = handshake_deadline - loop.time()
                    if wait <= 0:
                        self._log.warning("handshake", result="fail", motivo="timeout")
                        return
                else:
                    wait = idle
                try:
                    async with asyncio.timeout(wait):
                        data = await self._reader.read(READ_SIZE)
                except TimeoutError:
                    if self.agency is None:
                        continue  # the deadline check above closes it
                    # Not idle while a request is unanswered (e.g. a winners
                    # query waiting for the draw, already off the queue), nor
                    # until the peer has had `idle` seconds after the last reply.
                    since_reply = asyncio.get_running_loop().time() - self._last_reply
                    if self._unanswered or since_reply < idle:
                        continue
                    self._log.info("idle_timeout", result="success", agencia=self.agency)
                    return
                if not data:
                    self._protocol.receive_eof()
                    return
                self._protocol.receive_data(data)
                await self._handle_frames()
        except ProtocolError as exc:
            self._log.warning("protocolo", result="fail", agencia=self.agency, error=str(exc))
            await self._queue(_FixedReply(Error(exc.code, str(exc))))
        except _CloseConnection:
            pass
        except OSError:
            pass  # the peer went away; nothing of it is half-stored
        finally:
            self._replies.put_nowait(_END)

    async def _handle_frames(self) -> None:
        today = datetime.date.today().isoformat()
        while True:
            try:
                message = self._protocol.next_event(today)
            except InvalidBatch as exc:
                self._log.warning("apuesta_invalida", result="fail", error=str(exc))
                await self._queue(_FixedReply(Error(ErrorCode.INVALID_BET, str(exc)), exc.count))
                continue
            if message is None:
                return
            await self._dispatch(message)

    async def _dispatch(self, message: Message) -> None:
        if isinstance(message, Batch | SingleBet) and self._server.barrier.opened:
            # Every agency is done (or the deadline passed): the draw is made
            # or about to be, and a bet now could not take part in it.
            raise DrawMade(f"{type(message).__name__} refused: the draw is made")
        if isinstance(message, Batch | SingleBet) and self._server.is_done(self.agency or 0):
            # Done is per agency, not per connection: no bets after it, even
            # on a new connection (they would miss the draw).
            raise OutOfOrder(
                f"{type(message).__name__} is not allowed: agency {self.agency} is done"
            )
        if isinstance(message, Batch):
            await self._submit(message.seq, message.records, None)
        elif isinstance(message, SingleBet):
            await self._submit(message.seq, (message.record,), message.record)
        elif isinstance(message, Done):
            await self._queue(_DoneReply())
        elif isinstance(message, StatusQuery):
            await self._queue(_StatusReply())
        elif isinstance(message, WinnersQuery):
            await self._queue(_WinnersReply())
        elif isinstance(message, Hello):
            await self._handshake(message)
        elif isinstance(message, Auth):
            await self._authenticate(message)

    async def _submit(self, seq: int, records: Any, single: Record | None) -> None:
        assert self.agency is not None  # the protocol allows bets only after HELLO
        await self._slots.acquire()
        # Every connection shares one commit queue: when it is full, stop
        # reading; TCP then slows the agency down instead of memory filling up.
        committer = self._server.committer
        await committer.wait_for_room()
        self._unanswered += 1
        future = committer.submit(PendingBatch(self.agency, seq, records))
        received = asyncio.get_running_loop().time()
        self._replies.put_nowait(_BatchReply(future, seq, len(records), single, received))

    async def _handshake(self, hello: Hello) -> None:
        agencies = self._server.config.agencies
        if hello.version != PROTOCOL_VERSION:
            refusal = Error(ErrorCode.BAD_VERSION, f"protocol version {hello.version} unknown")
        elif not 1 <= hello.agency <= agencies:
            refusal = Error(
                ErrorCode.UNKNOWN_AGENCY, f"agency {hello.agency} is not in 1..{agencies}"
            )
        elif self._server.secrets is not None:
            # Prove it: a fresh nonce, answered with an HMAC of the agency's secret.
            nonce = secrets.token_bytes(NONCE_SIZE)
            self._challenge = (hello.agency, nonce)
            await self._queue(_FixedReply(Challenge(nonce)))
            return
        else:
            await self._admit(hello.agency)
            return
        await self._refuse(refusal)

    async def _authenticate(self, auth: Auth) -> None:
        assert self._challenge is not None  # the protocol allows AUTH only after CHALLENGE
        agency, nonce = self._challenge
        self._challenge = None
        secret = self._server.secrets.get(agency) if self._server.secrets else None
        if secret is None or not hmac.compare_digest(auth.mac, auth_mac(secret, agency, nonce)):
            await self._refuse(Error(ErrorCode.AUTH_FAILED, f"agency {agency}: wrong secret"))
        await self._admit(agency)

    async def _admit(self, agency: int) -> None:
        # An older connection of the same agency (its process died, or the
        # line dropped) may still hold batches it read but the store has not
        # committed. Stop it reading, and let those batches settle, before
        # telling the agency what is stored: else the WELCOME would be short,
        # and a late old batch would take a sequence the agency reuses.
        for other in self._server.handlers_of(agency):
            if other is not self:
                other.stop_reading()
        await self._server.committer.settle(agency)
        self.agency = agency
        self._log = self._log.bind(agencia=agency)
        last_seq, committed = await self._server.committer.call(lambda s: s.progress(agency))
        self._log.info("handshake", result="success", last_seq=last_seq, bets=committed)
        await self._queue(_FixedReply(Welcome(last_seq, committed)))

    async def _refuse(self, refusal: Error) -> NoReturn:
        self._log.warning("handshake", result="fail", motivo=refusal.message)
        await self._queue(_FixedReply(refusal))
        raise _CloseConnection

    # -- writer --------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        idle = self._server.config.timeout_idle
        try:
            loop = asyncio.get_running_loop()
            while (reply := await self._replies.get()) is not _END:
                data = await self._answer(reply)
                if self._writer.transport.is_closing():  # reset by the peer meanwhile
                    raise ConnectionResetError("the agency closed the connection")
                self._writer.write(data)
                self._sent_error = self._sent_error or data[4] == FrameType.ERROR
                async with asyncio.timeout(idle):
                    await self._writer.drain()
                self._unanswered -= 1
                self._last_reply = loop.time()
                if isinstance(reply, _BatchReply):
                    self._server.ack_latencies.add(self._last_reply - reply.received)
                self._slots.release()
        except (OSError, TimeoutError, RuntimeError):
            # The peer is gone or stopped reading: nothing more can reach it.
            # (uvloop raises RuntimeError for a write to a transport it closed.)
            if self._reader_task is not None:
                self._reader_task.cancel()

    async def _answer(self, reply: _Reply) -> bytes:
        if isinstance(reply, _BatchReply):
            return self._answer_batch(reply, await reply.future)
        if isinstance(reply, _FixedReply):
            if reply.log_fail:
                self._log.info("apuesta_recibida", result="fail", cantidad=reply.log_fail)
                self._server.counters["batches_refused"] += 1
            return encode(reply.message)
        if isinstance(reply, _DoneReply):
            return await self._answer_done()
        if isinstance(reply, _StatusReply):
            return encode(Status(json.dumps(await self._server.status())))
        return await self._answer_winners()

    def _answer_batch(self, reply: _BatchReply, result: Any) -> bytes:
        log = self._log
        counters = self._server.counters
        if result is Outcome.STORED:
            counters["batches_stored"] += 1
            counters["bets_stored"] += reply.count
            if reply.single is not None:
                bet = reply.single
                log.info("apuesta_almacenada", result="success", dni=bet[2], numero=int(bet[4]))
            else:
                log.info("apuesta_recibida", result="success", cantidad=reply.count)
            return encode(Ack(reply.seq))
        if result is Outcome.DUPLICATE:
            log.debug("apuesta_duplicada", result="success", seq=reply.seq)
            return encode(Ack(reply.seq))
        log.info("apuesta_recibida", result="fail", cantidad=reply.count)
        counters["batches_refused"] += 1
        if result is Outcome.LATE:
            return encode(Error(ErrorCode.DRAW_MADE, f"batch {reply.seq} came after the draw"))
        if result is Outcome.GAP:
            return encode(
                Error(ErrorCode.BAD_SEQUENCE, f"batch {reply.seq} skips ahead of the last stored")
            )
        return encode(Error(ErrorCode.STORAGE, f"batch {reply.seq} was not stored: {result}"))

    async def _answer_done(self) -> bytes:
        assert self.agency is not None
        try:
            await self._server.agency_done(self.agency)
        except StoreError as exc:
            self._log.error("agencia_lista", result="fail", error=str(exc))
            return encode(Error(ErrorCode.STORAGE, str(exc)))
        return encode(Ack(0))

    async def _answer_winners(self) -> bytes:
        assert self.agency is not None
        barrier = self._server.barrier
        if barrier.opened and not barrier.drawn:  # the draw failed (store error): try again
            await self._server.draw()
        try:
            async with asyncio.timeout(self._server.config.timeout_winners):
                drawn = await barrier.wait_drawn()
        except TimeoutError:
            self._log.info("consulta_ganadores", result="in_progress", faltan=barrier.missing)
            return encode(NotReady())
        if not drawn:
            return encode(Error(ErrorCode.SHUTTING_DOWN, "the server is shutting down"))
        winners = self._server.winners_of(self.agency)
        self._log.info("consulta_ganadores", result="success", cant_ganadores=len(winners))
        return encode(Winners(winners))


class _CloseConnection(Exception):
    """Internal: the handshake was refused; stop reading after queuing the error."""
