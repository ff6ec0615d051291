"""The agency's I/O layer: one connection to the server, and the helpers around it.

`Connection` wraps an asyncio stream with its sans-I/O `ClientProtocol`:
`send` goes through the protocol's state checks, `receive` feeds it bytes
until a whole reply is in; `tls_context` makes what `open` takes for TLS.
Every await here has a timeout. `query_status` is
the one request that needs no session; `shielded` keeps cleanup running
through a cancellation; `raise_for` and `retryable` turn replies and errors
into what the retry loops of `Session` and `BatchSender` act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any, NoReturn

from .errors import ConnectionLost, ProtocolError, ServerRefused
from .protocol import ClientProtocol, Error, ErrorCode, Message, Status, StatusQuery, operator_proof

__all__ = [
    "TLS_HINT",
    "Connection",
    "HostNotFound",
    "StorageFault",
    "closed_hint",
    "query_status",
    "raise_for",
    "retryable",
    "run_together",
    "shielded",
    "tls_context",
]

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
    if isinstance(exc, socket.gaierror):  # a name that does not resolve will not next time
        return False
    return isinstance(exc, OSError | StorageFault)


#: Added to "the server closed the connection" when the client spoke plain TCP:
#: a TLS server closes a connection whose first bytes are not a TLS handshake.
TLS_HINT = "if the server uses TLS, pass --tls-ca"


def closed_hint(exc: BaseException, tls: ssl.SSLContext | None) -> str:
    """A hint for an error that looks like plain TCP meeting a TLS server, or ""."""
    if tls is None and isinstance(exc, ConnectionResetError):
        return TLS_HINT
    return ""


class HostNotFound(ConnectionLost):
    """The server's host name does not resolve; retrying would not change that."""


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
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None
                )
        except socket.gaierror as exc:
            raise HostNotFound(f"cannot resolve the host name {host!r}: {exc.strerror}") from None
        return cls(reader, writer)

    def send(self, message: Message) -> None:
        self._write(self.protocol.send(message))

    def send_batch(self, seq: int, data: bytes, count: int, input_rows: int = 0) -> None:
        self._write(self.protocol.send_batch(seq, data, count, input_rows))

    def send_batches(self, batches: Iterable[tuple[int, bytes, int, int]]) -> None:
        """Send BATCH frames ``(seq, records, count, input_rows)`` in one write.

        One write, one system call for them all: on loopback a send costs
        the sender the receiver's side of TCP too, per call more than per byte.
        """
        self._write(b"".join([self.protocol.send_batch(*batch) for batch in batches]))

    def _write(self, data: bytes) -> None:
        if self._writer.transport.is_closing():  # uvloop would raise RuntimeError
            raise ConnectionResetError("the connection to the server is closed")
        self._writer.write(data)

    @property
    def write_buffered(self) -> int:
        """Bytes written and not yet taken by the kernel (what a drain would wait for)."""
        return self._writer.transport.get_write_buffer_size()

    async def drain(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._writer.drain()

    def next_buffered(self) -> Message | None:
        """The next reply if its bytes are in already, else None (no waiting, no timer)."""
        return self.protocol.next_event()

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


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context that trusts ``ca_file`` (or the system's CAs)."""
    return ssl.create_default_context(cafile=ca_file)


async def run_together(*coroutines: Awaitable[None]) -> None:
    """Run coroutines as tasks of one TaskGroup; re-raise the first real error bare."""
    try:
        async with asyncio.TaskGroup() as tg:
            for coroutine in coroutines:
                tg.create_task(coroutine)  # type: ignore[arg-type]
    except BaseExceptionGroup as group:
        raise _first_error(group) from None


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group


async def query_status(
    host: str,
    port: int,
    timeout: float = 5.0,
    tls: ssl.SSLContext | None = None,
    operator_token: bytes | None = None,
) -> dict[str, Any]:
    """Ask a server how its round is going (no handshake needed).

    A server with secrets answers a peer with no ``operator_token`` (the
    secrets file's ``operator:`` line) with the round's summary only.

    Returns:
        The server's STATUS JSON, decoded (see docs/PROTOCOL.md).

    Raises:
        OSError: the server could not be reached or did not answer in time
            (the message says so, with a TLS hint if it closed without a word).
        HostNotFound: the host name does not resolve.
        ServerRefused: the server answered with an error (its connection limit...).
        ProtocolError: the peer does not speak the lottery protocol.
    """
    conn = await Connection.open(host, port, timeout, tls)
    where = f"{host}:{port}"
    try:
        token = operator_proof(operator_token) if operator_token else b""
        reply = await conn.request(StatusQuery(token), timeout)
    except ConnectionResetError as exc:
        hint = closed_hint(exc, tls)
        raise ConnectionResetError(f"{exc}" + (f" ({hint})" if hint else "")) from None
    except TimeoutError:
        raise TimeoutError(
            f"{where} sent no reply in {timeout:g} s: is it a lottery server, on the right port?"
        ) from None
    except ProtocolError as exc:
        raise ProtocolError(
            f"{where} is not a lottery server, or not this version ({exc})"
        ) from None
    finally:
        await shielded(conn.close())
    if isinstance(reply, Error):  # e.g. at its connection limit: the server's own words
        raise ServerRefused(reply.code, reply.message)
    if not isinstance(reply, Status):
        raise_for(reply)  # an ERROR (no room, shutting down) says why
    status: dict[str, Any] = json.loads(reply.text)
    return status
