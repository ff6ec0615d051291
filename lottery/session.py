"""The agency's session with the server: connecting, the handshake, reconnecting.

`Session` owns the one live `Connection` (a socket and its `ClientProtocol`)
and what the handshake's WELCOME says: the last batch the server stored and,
on the first connection of a process, how many bets an earlier run stored,
which `send_bets` and `send_bet` skip. `AsyncAgency` and the batch sender
reach the server only through it; `Session.retry_or_raise` is the shared step
of their retry loops (drop the line, count the try, wait).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from .backoff import Retry
from .connection import Connection, raise_for, retryable, shielded
from .errors import AuthenticationRequired, ConnectionLost, ProtocolError, ServerRefused
from .log import get_logger
from .models import FS, RS
from .participant import DrawParticipant
from .protocol import (
    Ack,
    Auth,
    Challenge,
    Commit,
    DrawInfo,
    DrawQuery,
    Error,
    ErrorCode,
    Hello,
    Message,
    Reveal,
    SingleBet,
    Welcome,
    auth_mac,
)

__all__ = ["Session"]


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
        draw: DrawParticipant | None = None,
    ) -> None:
        self.agency_id, self.host, self.port = agency_id, host, port
        #: This agency's part in a random draw; None: it speaks protocol 1 only.
        self.draw = draw
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
            if self.draw is not None:
                await self._join_draw(conn, self.draw)
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

    async def _join_draw(self, conn: Connection, draw: DrawParticipant) -> None:
        """After WELCOME: how is the round drawn? In a random round, commit (docs/DRAW.md)."""
        info = await conn.request(DrawQuery(), self.timeout)
        if isinstance(info, Error):
            raise ServerRefused(info.code, info.message)
        if not isinstance(info, DrawInfo):
            raise ProtocolError(f"expected DRAW_INFO, got {type(info).__name__}")
        draw.mode = info.mode
        if info.mode != "random":
            return
        first = draw.server_commitment is None
        await asyncio.to_thread(draw.nonce_for, info.commitment)  # kept before it is sent
        mine = draw.commitment()
        reply = await conn.request(Commit(mine), self.timeout)
        if isinstance(reply, Error) and reply.code == ErrorCode.BAD_COMMITMENT:
            if not draw.refused:
                self._log.error("compromiso_sorteo", result="fail", motivo=reply.message,
                                compromiso=mine.hex())  # fmt: skip
            draw.refused = True  # it counts as not revealing; its bets still count
        elif reply != Ack(0):
            if isinstance(reply, Error):
                raise ServerRefused(reply.code, reply.message)
            raise ProtocolError(f"expected ACK to COMMIT, got {type(reply).__name__}")
        if first:
            self._log.info(
                "compromiso_sorteo", result="success", servidor=info.commitment.hex(),
                agencia=mine.hex(),
            )  # fmt: skip

    async def reveal(self) -> None:
        """Send this agency's nonce (the server asked for it: betting has closed)."""
        draw = self.draw
        assert draw is not None and draw.nonce is not None
        replies: list[Message] = []

        def answered(reply: Message) -> bool:
            refused = isinstance(reply, Error) and reply.code == ErrorCode.BAD_COMMITMENT
            if reply == Ack(0) or refused:
                replies.append(reply)
                return True
            return False

        await self.round_trip(Reveal(draw.nonce), answered)
        if replies[-1] == Ack(0):
            draw.revealed = True
            self._log.info("revelacion", result="success", nonce=draw.nonce.hex())
        else:
            draw.refused = True
            reason = replies[-1].message if isinstance(replies[-1], Error) else ""
            self._log.error("revelacion", result="fail", motivo=reason)

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

    async def round_trip(self, message: Message, answered: Callable[[Message], bool]) -> None:
        """Send ``message`` until a reply ``answered`` accepts, reconnecting if the line drops."""
        retry = self.retry()
        while True:
            try:
                conn = await self.ensure_open()
                reply = await conn.request(message, self.timeout)
                if answered(reply):
                    return
                raise_for(reply)
            except Exception as exc:
                await self.retry_or_raise(retry, exc, type(message).__name__)
            except BaseException:  # cancelled: a late reply must not meet the next request
                self.resync = True
                await self.drop()
                raise

    async def send_bet(self, record: tuple[str, ...]) -> None:
        """Send one validated bet on its own, unless an earlier run already stored it."""
        # The first handshake says where an earlier run of this agency stopped.
        await self.ensure_open()
        if self.skip:  # stored by an earlier run of this agency
            self.skip -= 1
            self._acknowledged(record)
            return
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        single = SingleBet(seq, record)  # type: ignore[arg-type]
        await self.round_trip(single, lambda reply: reply == Ack(seq))
        self._acknowledged(record)

    def _acknowledged(self, record: tuple[str, ...]) -> None:
        if self.draw is not None:  # the receipt will cover it
            self.draw.digest.update((FS.join(record) + RS).encode(), 1)
