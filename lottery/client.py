"""`AsyncAgency`: an agency's client for the central server.

::

    async with AsyncAgency(agency_id, host, port) as agency:
        await agency.send_bets("agency-1.csv")   # a path, or an iterable of bets
        await agency.notify()                    # "I am done"
        winners = await agency.winners()         # my winners' documents

or ``await agency.run(path)`` for all three.

How `send_bets` works (the asyncio version of the seed's goroutines and
channels): three tasks in one `TaskGroup`, joined by bounded queues.

- the *reader* parses and validates the file in a worker thread, a chunk of
  rows at a time, so file I/O never blocks the event loop;
- the *batcher* cuts records into batches of at most ``batch_max_amount``
  bets that also fit the 8 KiB frame limit, and numbers them (``seq``);
- the *sender* keeps up to ``max_in_flight`` batches on the wire, while a
  helper task reads their acks. A batch stays in the window until its ack
  arrives; if the connection is lost, the agency reconnects with exponential
  backoff, learns from the handshake which batches the server already stored,
  and resends the rest. The server drops any resent batch it already has, so
  every bet is stored exactly once.

When a connection opens for the first time, the handshake also says how many
of this agency's bets are already stored (a restarted agency process); that
many valid bets are skipped from the start of what `send_bets` is given.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import os
import random
import ssl
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .csvfiles import AgencyFileReader, RecordBlock, RejectedRow
from .errors import (
    AuthenticationRequired,
    ConnectionLost,
    InvalidBet,
    ProtocolError,
    ServerRefused,
    WinnersUnavailable,
)
from .log import get_logger
from .models import Bet
from .protocol import (
    Ack,
    Auth,
    BatchCutter,
    Challenge,
    ClientProtocol,
    Done,
    Error,
    ErrorCode,
    Hello,
    Message,
    NotReady,
    SingleBet,
    Status,
    StatusQuery,
    Welcome,
    Winners,
    WinnersQuery,
    auth_mac,
    encode,
    encode_batch_data,
    encode_record,
    skip_records,
)

__all__ = ["AsyncAgency", "RoundResult", "SendReport", "query_status", "tls_context"]

READ_SIZE = 65536
#: The longest wait between two tries (connecting, or asking for the winners).
MAX_BACKOFF = 5.0
#: Blocks of validated records waiting for the batcher.
BLOCK_QUEUE_SIZE = 4
# Refusals worth a reconnect: the server may have room or be back later.
_RETRYABLE_CODES = {ErrorCode.TOO_MANY_CONNECTIONS, ErrorCode.SHUTTING_DOWN}


@dataclass
class SendReport:
    """What `AsyncAgency.send_bets` did."""

    acknowledged: int = 0  # bets the server confirmed as stored
    skipped: int = 0  # bets already stored before this run (resume), not resent
    rejected: list[RejectedRow] = field(default_factory=list)  # invalid rows, not sent


@dataclass
class RoundResult:
    """What `AsyncAgency.run` did: the send report and this agency's winners."""

    report: SendReport
    winners: list[str]


@dataclass(slots=True)
class _Outgoing:
    seq: int
    frame: bytes
    count: int
    sent: float = 0.0  # loop time of the last send, for the ack latency


class _StorageFault(Exception):
    """Internal: the server refused a batch for a storage fault; retry it later."""


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context that trusts ``ca_file`` (or the system's CAs)."""
    return ssl.create_default_context(cafile=ca_file)


class _BlockReader(Protocol):
    rejected: list[RejectedRow]

    def read_block(self) -> RecordBlock | None: ...

    def close(self) -> None: ...


class _IterableReader:
    """Reads bets from an iterable (`Bet` objects or five-field rows)."""

    def __init__(self, bets: Iterable[Bet | Sequence[str]], chunk_size: int = 4096) -> None:
        self._iterator = iter(bets)
        self._chunk_size = chunk_size
        self._index = 0
        self._today = datetime.date.today().isoformat()
        self.rejected: list[RejectedRow] = []

    def read_block(self) -> RecordBlock | None:
        records: list[bytes] = []
        for item in self._iterator:
            self._index += 1
            fields = item.fields() if isinstance(item, Bet) else item
            try:
                records.append(encode_record(fields, self._today))
            except InvalidBet as exc:
                self.rejected.append(RejectedRow("<bets>", self._index, str(exc)))
            if len(records) >= self._chunk_size:
                break
        return RecordBlock(b"".join(records), len(records)) if records else None

    def close(self) -> None:
        pass


class _Connection:
    """One TCP connection to the server, with its sans-I/O protocol."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._protocol = ClientProtocol()

    @classmethod
    async def open(
        cls, host: str, port: int, timeout: float, tls: ssl.SSLContext | None = None
    ) -> _Connection:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls else None
            )
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        if self._writer.transport.is_closing():  # uvloop would raise RuntimeError
            raise ConnectionResetError("the connection to the server is closed")
        self._writer.write(data)

    async def drain(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._writer.drain()

    async def receive(self, timeout: float) -> Message:
        """The next reply; raises ConnectionResetError if the server closed."""
        while (message := self._protocol.next_event()) is None:
            async with asyncio.timeout(timeout):
                data = await self._reader.read(READ_SIZE)
            if not data:
                raise ConnectionResetError("the server closed the connection")
            self._protocol.receive_data(data)
        return message

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()


class _Window:
    """The batches on the wire and not yet acknowledged, in send order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.unacked: dict[int, _Outgoing] = {}
        self.input_done = False
        self._changed = asyncio.Condition()

    @property
    def complete(self) -> bool:
        return self.input_done and not self.unacked

    async def wait_for_room(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.unacked) < self.size)

    async def wait_for_unacked(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self.unacked) or self.input_done)

    async def add(self, item: _Outgoing) -> None:
        async with self._changed:
            self.unacked[item.seq] = item
            self._changed.notify_all()

    async def finish_input(self) -> None:
        async with self._changed:
            self.input_done = True
            self._changed.notify_all()

    async def acknowledge_through(self, seq: int) -> list[_Outgoing]:
        """Drop every batch up to ``seq`` and return them."""
        async with self._changed:
            done = [self.unacked.pop(s) for s in [s for s in self.unacked if s <= seq]]
            self._changed.notify_all()
            return done


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group


async def _run_together(*coroutines: Awaitable[None]) -> None:
    """Run coroutines as tasks of one TaskGroup; re-raise the first real error bare."""
    try:
        async with asyncio.TaskGroup() as tg:
            for coroutine in coroutines:
                tg.create_task(coroutine)  # type: ignore[arg-type]
    except BaseExceptionGroup as group:
        raise _first_error(group) from None


async def query_status(
    host: str, port: int, timeout: float = 5.0, tls: ssl.SSLContext | None = None
) -> dict[str, Any]:
    """Ask a server how its round is going (no handshake needed).

    Returns:
        The server's STATUS JSON, decoded (see docs/PROTOCOL.md).

    Raises:
        OSError: the server could not be reached or did not answer in time.
        ProtocolError: the server answered something else.
    """
    conn = await _Connection.open(host, port, timeout, tls)
    try:
        conn.send(encode(StatusQuery()))
        await conn.drain(timeout)
        reply = await conn.receive(timeout)
    finally:
        await conn.close()
    if not isinstance(reply, Status):
        raise ProtocolError(f"expected STATUS, got {type(reply).__name__}")
    status: dict[str, Any] = json.loads(reply.text)
    return status


class AsyncAgency:
    """An agency's connection to the central server. Use with ``async with``.

    Args:
        agency_id: this agency's id (1..N); the server files every bet under it.
        host, port: the central server.
        batch_max_amount: most bets per batch (tp0 ``batch.maxAmount``); a batch
            is also cut before it would exceed the 8 KiB frame limit.
        max_in_flight: batches sent before their acks return.
        timeout: seconds for connecting and for each reply.
        winners_attempts: tries of the winners query (the seed's client made 5).
        winners_base_delay: first back-off delay between tries, doubled each try.
        winners_timeout: seconds to wait for one winners reply (the server holds
            a query up to 30 s by default before answering "not ready").
        reconnect_attempts: tries to reach the server when it is unreachable.
        secret: this agency's secret, for a server started with ``--secrets``
            (see `lottery.auth`); it never crosses the wire.
        tls: an `ssl.SSLContext` (see `tls_context`) for a server started
            with ``--tls-cert``; None for plain TCP.
    """

    def __init__(
        self,
        agency_id: int,
        host: str = "127.0.0.1",
        port: int = 12345,
        *,
        batch_max_amount: int = 200,
        max_in_flight: int = 8,
        timeout: float = 30.0,
        winners_attempts: int = 5,
        winners_base_delay: float = 0.5,
        winners_timeout: float = 40.0,
        reconnect_attempts: int = 10,
        reconnect_base_delay: float = 0.05,
        secret: bytes | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if batch_max_amount < 1 or max_in_flight < 1 or winners_attempts < 1:
            raise ValueError("batch_max_amount, max_in_flight and winners_attempts must be ≥ 1")
        self.agency_id = agency_id
        self.host = host
        self.port = port
        self.batch_max_amount = batch_max_amount
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.winners_attempts = winners_attempts
        self.winners_base_delay = winners_base_delay
        self.winners_timeout = winners_timeout
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_base_delay = reconnect_base_delay
        self._secret = secret
        self._tls = tls
        self._conn: _Connection | None = None
        self._connected_once = False
        self._last_seq = 0  # the last batch the server has stored, as of the handshake
        self._next_seq = 1
        self._skip = 0  # bets already stored before this process started
        self.reconnects = 0
        self.batches_sent = 0
        #: Seconds from sending each batch to its ack (the latest 100,000).
        self.ack_latencies: collections.deque[float] = collections.deque(maxlen=100_000)
        #: Progress of send_bets, for a progress display: valid bets read from
        #: the source, bets sent (resends not counted again), bets acknowledged.
        self.bets_read = 0
        self.bets_sent = 0
        self.bets_acknowledged = 0
        self._log = get_logger(agencia=agency_id)

    def __repr__(self) -> str:
        state = "open" if self._conn else "closed"
        return (
            f"<AsyncAgency id={self.agency_id} {self.host}:{self.port} {state} "
            f"next_seq={self._next_seq} batches_sent={self.batches_sent} "
            f"reconnects={self.reconnects}>"
        )

    # -- connection ----------------------------------------------------------------------

    async def __aenter__(self) -> AsyncAgency:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Connect and shake hands, retrying with exponential backoff.

        Raises:
            ConnectionLost: the server could not be reached in any attempt.
            ServerRefused: the server refused this agency (bad id, version...).
        """
        delay = self.reconnect_base_delay
        last_error: BaseException | None = None
        for attempt in range(1, self.reconnect_attempts + 1):
            try:
                await self._handshake()
                return
            except ssl.SSLError as exc:  # a certificate problem does not heal by retrying
                raise ConnectionLost(f"TLS with {self.host}:{self.port} failed: {exc}") from None
            except (OSError, ServerRefused) as exc:
                if isinstance(exc, ServerRefused) and exc.code not in _RETRYABLE_CODES:
                    raise
                last_error = exc
            if attempt < self.reconnect_attempts:
                self._log.info("conectar", result="in_progress", intento=attempt, error=last_error)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, MAX_BACKOFF)
        hint = ""
        if isinstance(last_error, ConnectionResetError) and self._tls is None:
            hint = " (if the server uses TLS, pass --tls-ca)"
        raise ConnectionLost(
            f"cannot reach {self.host}:{self.port} after {self.reconnect_attempts} attempts: "
            f"{last_error}{hint}"
        )

    async def _handshake(self) -> None:
        conn = await _Connection.open(self.host, self.port, self.timeout, self._tls)
        try:
            conn.send(encode(Hello(self.agency_id)))
            reply = await conn.receive(self.timeout)
            if isinstance(reply, Challenge):  # the server wants proof of who we are
                if self._secret is None:
                    raise AuthenticationRequired(
                        f"{self.host}:{self.port} requires a secret for agency "
                        f"{self.agency_id} (--secret-file or CLI_SECRET)"
                    )
                conn.send(encode(Auth(auth_mac(self._secret, self.agency_id, reply.nonce))))
                reply = await conn.receive(self.timeout)
        except BaseException:
            await conn.close()
            raise
        if isinstance(reply, Error):
            await conn.close()
            raise ServerRefused(reply.code, reply.message)
        if not isinstance(reply, Welcome):
            await conn.close()
            raise ProtocolError(f"expected WELCOME, got {type(reply).__name__}")
        self._conn = conn
        self._last_seq = reply.last_seq
        if not self._connected_once:
            # A fresh process: resume after what an earlier run already stored.
            self._connected_once = True
            self._next_seq = reply.last_seq + 1
            self._skip = reply.committed_bets
        self._log.debug("handshake", result="success", last_seq=reply.last_seq)

    async def _first_handshake(self) -> None:
        # The first handshake says where an earlier run of this agency stopped:
        # it must come before any bet is numbered or skipped.
        if not self._connected_once:
            await self.connect()

    async def _reconnect(self) -> None:
        await self._drop_connection()
        self.reconnects += 1
        await self.connect()

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def aclose(self) -> None:
        """Close the connection. Safe to call more than once."""
        await self._drop_connection()

    def _connection(self) -> _Connection:
        if self._conn is None:
            raise ConnectionResetError("not connected")
        return self._conn

    async def _round_trip(self, frame: bytes) -> Message:
        """Send one request and return its reply, reconnecting if the line drops."""
        while True:
            try:
                conn = self._connection()
                conn.send(frame)
                await conn.drain(self.timeout)
                return await conn.receive(self.timeout)
            except OSError as exc:
                self._log.info("reconectar", result="in_progress", error=str(exc) or repr(exc))
                await self._reconnect()

    # -- bets ----------------------------------------------------------------------------

    async def send_bet(self, bet: Bet | Sequence[str]) -> None:
        """Send one bet on its own (tp0 ej5) and wait until it is stored.

        Raises:
            InvalidBet: the bet breaks a rule; nothing was sent.
        """
        fields = bet.fields() if isinstance(bet, Bet) else tuple(bet)
        encode_record(fields)  # validates, raising InvalidBet before anything is sent
        await self._first_handshake()
        if self._skip:  # stored by an earlier run of this agency
            self._skip -= 1
        else:
            seq = self._next_seq
            self._next_seq += 1
            frame = encode(SingleBet(seq, tuple(fields)))  # type: ignore[arg-type]
            while True:
                reply = await self._round_trip(frame)
                if isinstance(reply, Ack) and reply.seq == seq:
                    break
                self._raise_for(reply)
        self._log.info("apuesta_enviada", result="success", dni=fields[2], numero=int(fields[4]))

    async def send_bets(
        self, source: str | os.PathLike[str] | Iterable[Bet | Sequence[str]]
    ) -> SendReport:
        """Send every valid bet of ``source`` and wait until all are stored.

        Args:
            source: an agency CSV file's path, or an iterable of `Bet` objects
                or five-field rows.

        Returns:
            A `SendReport`; invalid rows are listed in ``rejected`` (and
            logged), not sent.

        Raises:
            ConnectionLost: the server stayed unreachable.
            ServerRefused: the server refused a batch.
        """
        await self._first_handshake()
        reader: _BlockReader
        if isinstance(source, str | os.PathLike):
            reader = await asyncio.to_thread(AgencyFileReader, source)
        else:
            reader = _IterableReader(source)
        report = SendReport()
        blocks: asyncio.Queue[RecordBlock | None] = asyncio.Queue(BLOCK_QUEUE_SIZE)
        frames: asyncio.Queue[_Outgoing | None] = asyncio.Queue(self.max_in_flight)
        try:
            await _run_together(
                self._read_blocks(reader, blocks),
                self._cut_batches(blocks, frames, report),
                self._send_batches(frames, report),
            )
        finally:
            reader.close()
        report.rejected = list(reader.rejected)
        return report

    async def _read_blocks(self, reader: _BlockReader, out: asyncio.Queue[Any]) -> None:
        logged = 0
        while True:
            # Reading and validating a block is blocking work: off the loop.
            block = await asyncio.to_thread(reader.read_block)
            for row in reader.rejected[logged:]:
                self._log.warning(
                    "apuesta_rechazada", result="fail", archivo=row.path, linea=row.line,
                    motivo=row.reason,
                )  # fmt: skip
            logged = len(reader.rejected)
            if block is None:
                break
            self.bets_read += block.count
            await out.put(block)
        await out.put(None)

    async def _cut_batches(
        self, inp: asyncio.Queue[RecordBlock | None], out: asyncio.Queue[Any], report: SendReport
    ) -> None:
        cutter = BatchCutter(self.batch_max_amount)
        while (block := await inp.get()) is not None:
            data = block.data
            if self._skip:  # stored by an earlier run of this agency
                data, skipped = skip_records(data, self._skip)
                self._skip -= skipped
                report.skipped += skipped
            for records, count in cutter.feed(data):
                await out.put(self._make_batch(records, count))
        last = cutter.flush()
        if last is not None:  # the last, short batch: never drop it
            await out.put(self._make_batch(*last))
        await out.put(None)

    def _make_batch(self, records: bytes, count: int) -> _Outgoing:
        seq = self._next_seq
        self._next_seq += 1
        return _Outgoing(seq, encode_batch_data(seq, records, count), count)

    async def _send_batches(self, frames: asyncio.Queue[Any], report: SendReport) -> None:
        window = _Window(self.max_in_flight)
        fruitless = 0  # reconnects in a row after which no batch got acknowledged
        while True:
            acknowledged = report.acknowledged
            try:
                await self._pump(frames, window, report)
                return
            except (OSError, _StorageFault) as exc:
                fruitless = 0 if report.acknowledged > acknowledged else fruitless + 1
                if fruitless >= self.reconnect_attempts:
                    raise ConnectionLost(
                        f"the connection to {self.host}:{self.port} dropped {fruitless} times "
                        f"in a row with no batch acknowledged (last: {exc!r})"
                    ) from None
                self._log.info("reconectar", result="in_progress", error=str(exc) or repr(exc))
                if fruitless > 1:  # a server that accepts and drops: do not hammer it
                    await asyncio.sleep(self.reconnect_base_delay * 2**fruitless)
                await self._reconnect()
                # The handshake says what the server stored: those need no resend.
                stored = await window.acknowledge_through(self._last_seq)
                report.acknowledged += sum(item.count for item in stored)
                self.bets_acknowledged += sum(item.count for item in stored)

    async def _pump(self, frames: asyncio.Queue[Any], window: _Window, report: SendReport) -> None:
        conn = self._connection()
        now = asyncio.get_running_loop().time()
        for item in window.unacked.values():  # resend, in order, after a reconnect
            item.sent = now
            conn.send(item.frame)
        await _run_together(
            self._write_batches(conn, frames, window),
            self._receive_acks(conn, window, report),
        )

    async def _write_batches(
        self, conn: _Connection, frames: asyncio.Queue[Any], window: _Window
    ) -> None:
        while not window.input_done:
            await window.wait_for_room()
            item = await frames.get()
            if item is None:
                await window.finish_input()
                return
            await window.add(item)  # before sending: a lost line resends it
            item.sent = asyncio.get_running_loop().time()
            conn.send(item.frame)
            self.batches_sent += 1
            self.bets_sent += item.count
            await conn.drain(self.timeout)

    async def _receive_acks(self, conn: _Connection, window: _Window, report: SendReport) -> None:
        while True:
            await window.wait_for_unacked()
            if window.complete:
                return
            reply = await conn.receive(self.timeout)
            if isinstance(reply, Ack):
                now = asyncio.get_running_loop().time()
                for item in await window.acknowledge_through(reply.seq):
                    report.acknowledged += item.count
                    self.bets_acknowledged += item.count
                    self.ack_latencies.append(now - item.sent)
            else:
                self._raise_for(reply)

    def _raise_for(self, reply: Message) -> None:
        if isinstance(reply, Error) and reply.code == ErrorCode.STORAGE:
            # The server could not store it (a full disk...) and kept nothing
            # of it: reconnect, as after a lost line, and send it again later.
            raise _StorageFault(reply.message)
        if isinstance(reply, Error):
            raise ServerRefused(reply.code, reply.message)
        raise ProtocolError(f"unexpected {type(reply).__name__} from the server")

    # -- done and winners ------------------------------------------------------------------

    async def notify(self) -> None:
        """Tell the server this agency has sent all its bets; waits until stored."""
        reply = await self._round_trip(encode(Done()))
        if not (isinstance(reply, Ack) and reply.seq == 0):
            self._raise_for(reply)
        self._log.debug("notificar", result="success")

    async def _query_winners(self) -> list[str] | None:
        conn = self._connection()
        conn.send(encode(WinnersQuery()))
        await conn.drain(self.timeout)
        documents: list[str] = []
        while True:
            reply = await conn.receive(self.winners_timeout)  # wait_for bounds it too
            if isinstance(reply, NotReady):
                return None
            if not isinstance(reply, Winners):
                self._raise_for(reply)
                raise AssertionError  # _raise_for always raises
            documents.extend(reply.documents)
            if reply.last:
                return documents

    async def winners(self) -> list[str]:
        """This agency's winning documents, once the draw is made.

        Each try waits up to ``winners_timeout``; a "not ready" answer or a
        time-out is retried after an exponential back-off with jitter.

        Raises:
            WinnersUnavailable: every attempt ended without winners.
        """
        delay = self.winners_base_delay
        outcome = "not ready"
        for attempt in range(1, self.winners_attempts + 1):
            try:
                if self._conn is None:
                    await self._reconnect()
                # One try, bounded as a whole: the send, the server's wait for
                # the draw, and every WINNERS frame of the answer.
                documents = await asyncio.wait_for(self._query_winners(), self.winners_timeout)
                if documents is not None:
                    self._log.info(
                        "consulta_ganadores", result="success", cant_ganadores=len(documents)
                    )
                    return documents
                outcome = "not ready"
            except TimeoutError:
                # A late reply would be read as the next query's: start clean.
                outcome = "timeout"
                await self._drop_connection()
            except ServerRefused as exc:
                if exc.code not in _RETRYABLE_CODES:
                    raise
                outcome = exc.server_message
                await self._drop_connection()
            except (OSError, ConnectionLost) as exc:
                outcome = str(exc) or repr(exc)
                await self._drop_connection()
            if attempt < self.winners_attempts:
                wait = delay * random.uniform(0.5, 1.5)
                self._log.info(
                    "consulta_ganadores", result="in_progress", intento=attempt,
                    motivo=outcome, espera=round(wait, 3),
                )  # fmt: skip
                await asyncio.sleep(wait)
                delay = min(delay * 2, MAX_BACKOFF)
        raise WinnersUnavailable(
            f"no winners after {self.winners_attempts} attempts (last: {outcome})"
        )

    async def run(
        self, source: str | os.PathLike[str] | Iterable[Bet | Sequence[str]]
    ) -> RoundResult:
        """Send all bets, say done, and get the winners: the whole round."""
        report = await self.send_bets(source)
        await self.notify()
        return RoundResult(report, await self.winners())
