"""The agency's session with the server: connecting, the handshake, reconnecting.

`Session` owns the one live `Connection` (a socket and its `ClientProtocol`)
and what the handshake's WELCOME says: the last batch the server stored and,
on the first connection of a process, how many bets an earlier run stored,
which `send_bets` skips. `AsyncAgency` and the batch sender reach the server
only through it; `Session.retry_or_raise` is the shared step of their retry
loops (drop the line, count the try, wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Coroutine
from typing import Any, NoReturn

from .backoff import Retry
from .errors import AuthenticationRequired, ConnectionLost, ProtocolError, ServerRefused
from .log import get_logger
from .protocol import (
    Auth,
    Challenge,
    ClientProtocol,
    Error,
    ErrorCode,
    Hello,
    Message,
    Welcome,
    auth_mac,
)

__all__ = ["Connection", "Session", "StorageFault", "raise_for", "retryable"]

READ_SIZE = 65536
# Refusals worth another try: the server may have room or be back later.
RETRYABLE_CODES = {ErrorCode.TOO_MANY_CONNECTIONS, ErrorCode.SHUTTING_DOWN}


class StorageFault(Exception):
    """Internal: the server could not store a request (a full disk...); resend it later."""


def raise_for(reply: Message) -> NoReturn:
    """Raise for a reply that is not the one expected."""
    if isinstance(reply, Error) and reply.code == ErrorCode.STORAGE:
        # The server kept nothing of it: as after a lost line, send it again later.
        raise StorageFault(reply.message)
    if isinstance(reply, Error):
        raise ServerRefused(reply.code, reply.message)
    raise ProtocolError(f"unexpected {type(reply).__name__} from the server")


def retryable(exc: BaseException) -> bool:
    """Whether a try that ended in ``exc`` is worth another (no reply, or "later")."""
    if isinstance(exc, ServerRefused):
        return exc.code in RETRYABLE_CODES
    return isinstance(exc, OSError | StorageFault)


async def shielded(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` to its end even if the caller is cancelled meanwhile.

    As httpcore's AsyncShieldCancellation: cleanup cut short leaks a socket.
    The cancellation is re-raised once the cleanup is over.
    """
    task = asyncio.ensure_future(coroutine)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()


class Connection:
    """One TCP connection to the server, with its sans-I/O protocol."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.protocol = ClientProtocol()

    @classmethod
    async def open(
        cls, host: str, port: int, timeout: float, tls: ssl.SSLContext | None = None
    ) -> Connection:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls else None
            )
        return cls(reader, writer)

    def send(self, message: Message) -> None:
        self._write(self.protocol.send(message))

    def send_batch(self, seq: int, data: bytes, count: int) -> None:
        self._write(self.protocol.send_batch(seq, data, count))

    def _write(self, data: bytes) -> None:
        if self._writer.transport.is_closing():  # uvloop would raise RuntimeError
            raise ConnectionResetError("the connection to the server is closed")
        self._writer.write(data)

    async def drain(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._writer.drain()

    async def receive(self, timeout: float) -> Message:
        """The next reply; raises ConnectionResetError if the server closed."""
        while (message := self.protocol.next_event()) is None:
            async with asyncio.timeout(timeout):
                data = await self._reader.read(READ_SIZE)
            if not data:
                raise ConnectionResetError("the server closed the connection")
            self.protocol.receive_data(data)
        return message

    async def request(self, message: Message, timeout: float) -> Message:
        """Send ``message`` and return the next reply."""
        self.send(message)
        await self.drain(timeout)
        return await self.receive(timeout)

    async def close(self) -> None:
        self._writer.close()  # synchronous: the socket closes even if we are cancelled here
        with contextlib.suppress(OSError):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()


class Session:
    """An agency's connection to the server, reopened as needed, and the resume state."""

    def __init__(
        self,
        agency_id: int,
        host: str,
        port: int,
        *,
        timeout: float,
        attempts: int,
        base_delay: float,
        secret: bytes | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.agency_id, self.host, self.port = agency_id, host, port
        self.timeout, self.attempts, self.base_delay = timeout, attempts, base_delay
        self._secret, self._tls = secret, tls
        self.conn: Connection | None = None
        self.connected_once = False
        self.last_seq = 0  # the last batch the server has stored, as of the handshake
        self.next_seq = 1
        self.skip = 0  # bets already stored before this process started
        self.resync = False  # numbered requests were abandoned: take next_seq from WELCOME
        self.handshakes = 0
        self.reconnects = 0
        self._log = get_logger(agencia=agency_id)

    def __repr__(self) -> str:
        state = self.conn.protocol.state.value if self.conn else "closed"
        return (
            f"<Session agency={self.agency_id} {self.host}:{self.port} {state} "
            f"last_seq={self.last_seq} next_seq={self.next_seq} "
            f"handshakes={self.handshakes} reconnects={self.reconnects}>"
        )

    def retry(self) -> Retry:
        """A fresh count of fruitless tries, bounded by the attempts setting."""
        return Retry(self.attempts, self.base_delay)

    async def connect(self) -> None:
        """Connect and shake hands, retrying with back-off.

        Raises:
            ConnectionLost: the server could not be reached in any attempt.
            ServerRefused: the server refused this agency (bad id, version...).
        """
        retry = self.retry()
        while True:
            try:
                await self.handshake()
                return
            except (OSError, ServerRefused) as exc:
                if not retryable(exc):
                    raise
                if not retry.failed():
                    hint = ""
                    if isinstance(exc, ConnectionResetError) and self._tls is None:
                        hint = " (if the server uses TLS, pass --tls-ca)"
                    raise ConnectionLost(
                        f"cannot reach {self.host}:{self.port} after {retry.failures} "
                        f"attempts: {exc}{hint}"
                    ) from None
                self._log.info("conectar", result="in_progress", intento=retry.failures, error=exc)
                await retry.wait()

    async def handshake(self) -> None:
        """One try at connecting: HELLO, the CHALLENGE if any, the WELCOME."""
        self.handshakes += 1
        try:
            conn = await Connection.open(self.host, self.port, self.timeout, self._tls)
        except ssl.SSLError as exc:  # a certificate problem does not heal by retrying
            raise ConnectionLost(f"TLS with {self.host}:{self.port} failed: {exc}") from None
        try:
            reply = await conn.request(Hello(self.agency_id), self.timeout)
            if isinstance(reply, Challenge):  # the server wants proof of who we are
                if self._secret is None:
                    raise AuthenticationRequired(
                        f"{self.host}:{self.port} requires a secret for agency "
                        f"{self.agency_id} (--secret-file or CLI_SECRET)"
                    )
                mac = auth_mac(self._secret, self.agency_id, reply.nonce)
                reply = await conn.request(Auth(mac), self.timeout)
            if isinstance(reply, Error):
                raise ServerRefused(reply.code, reply.message)
            if not isinstance(reply, Welcome):
                raise ProtocolError(f"expected WELCOME, got {type(reply).__name__}")
        except BaseException:
            await shielded(conn.close())
            raise
        self.conn = conn
        self.last_seq = reply.last_seq
        if not self.connected_once or self.resync:
            # A fresh process resumes after what an earlier run stored; after
            # abandoned requests, the server's count is the only sure one.
            self.next_seq = reply.last_seq + 1
            if not self.connected_once:
                self.skip = reply.committed_bets
            self.connected_once, self.resync = True, False
        self._log.debug("handshake", result="success", last_seq=reply.last_seq)

    async def ensure_open(self) -> Connection:
        """The live connection: the first one (a whole `connect`), or one reconnect try."""
        if self.conn is None:
            if self.connected_once:
                self.reconnects += 1
                await self.handshake()
            else:
                await self.connect()
        assert self.conn is not None
        return self.conn

    async def drop(self) -> None:
        """Close the connection, if any; shielded from cancellation."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await shielded(conn.close())

    async def retry_or_raise(self, retry: Retry, exc: BaseException, what: str) -> None:
        """After a try that ended in ``exc``: drop the line, then wait or give up.

        Raises:
            ``exc`` itself when retrying cannot help; `ConnectionLost` when
            ``retry`` is out of attempts.
        """
        await self.drop()
        if not retryable(exc):
            raise exc
        if not retry.failed():
            raise ConnectionLost(
                f"{what}: the connection to {self.host}:{self.port} failed {retry.failures} "
                f"times in a row with no reply (last: {exc!r})"
            ) from None
        delay = retry.next_delay()
        self._log.info(
            "reconectar", result="in_progress", intento=retry.failures,
            espera=round(delay, 3), error=str(exc) or repr(exc),
        )  # fmt: skip
        await retry.wait(delay)
