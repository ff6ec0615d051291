"""The agency's session with the server: connecting, the handshake, reconnecting.

`Session` owns the one live `Connection` (a socket and its `ClientProtocol`)
and what the handshake's WELCOME says: the last batch the server stored, the
round's date (every bet is validated as of that day) and, on the first
connection of a process, where in its input an earlier run stopped, which
`send_bets` and `send_bet` skip and check (`resume.ResumeCheck`). `AsyncAgency` and the batch sender
reach the server only through it; `Session.retry_or_raise` is the shared step
of their retry loops (drop the line, count the try, wait). The handshake's
exchange is lottery/handshake.py, the draw's part of it lottery/drawsession.py,
and the single-bet path over the session lottery/singlebet.py.

With several servers (lottery/servers.py), a try with no reply moves to the next one.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence

from . import clock
from .backoff import Retry
from .connection import Connection, HostNotFound, StorageFault, closed_hint, raise_for, shielded
from .drawsession import join_draw
from .errors import ConnectionLost, ServerRefused
from .handshake import shake_hands
from .log import get_logger
from .participant import DrawParticipant
from .protocol import Message
from .resume import ResumeCheck
from .servers import ServerList

__all__ = ["Session"]


class Session:
    """An agency's connection to the server, reopened as needed, and the resume state."""

    def __init__(
        self,
        agency_id: int,
        servers: Sequence[tuple[str, int]],
        *,
        timeout: float,
        attempts: int,
        base_delay: float,
        secret: bytes | None = None,
        tls: ssl.SSLContext | None = None,
        draw: DrawParticipant | None = None,
    ) -> None:
        self.agency_id, self._log = agency_id, get_logger(agencia=agency_id)
        self.servers = ServerList(servers, self._log)
        #: This agency's part in a random draw; None: it never asks how the round is drawn.
        self.draw = draw
        self.timeout, self.attempts, self.base_delay = timeout, attempts, base_delay
        self._secret, self._tls = secret, tls
        self.conn: Connection | None = None
        self.connected_once = False
        self.last_seq = 0  # the last batch the server has stored, as of the handshake
        self.next_seq = 1
        #: The round's date, as the last WELCOME said (the local date until then).
        self.today = clock.today()
        #: What earlier runs stored: skipped and checked (set by the first WELCOME).
        self.resume = ResumeCheck(agency_id)
        #: Input rows this process has gone through (sources before the current one).
        self.position = 0
        self.resync = False  # numbered requests were abandoned: take next_seq from WELCOME
        self.handshakes = 0
        self.reconnects = 0

    def __repr__(self) -> str:
        state = self.conn.protocol.state.value if self.conn else "closed"
        return (
            f"<Session agency={self.agency_id} {self.servers.where} {state} "
            f"last_seq={self.last_seq} next_seq={self.next_seq} "
            f"handshakes={self.handshakes} reconnects={self.reconnects}>"
        )

    def retry(self) -> Retry:
        """A fresh count of fruitless tries, in rounds through the server list."""
        return Retry(self.attempts, self.base_delay, cycle=len(self.servers))

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
            except (OSError, ServerRefused, HostNotFound, StorageFault) as exc:
                if not self.servers.retryable(exc):
                    raise
                hint = closed_hint(exc, self._tls)
                if not retry.failed():
                    raise ConnectionLost(
                        f"cannot reach {self.servers.describe()} after {retry.failures} "
                        f"attempts: {exc}" + (f" ({hint})" if hint else "")
                    ) from None
                if hint and retry.tries == 1:
                    # Said at once, not after every retry: the likeliest cause
                    # of a close before any reply is a TLS server.
                    self._log.warning("conectar", result="fail", error=str(exc), pista=hint)
                await self._next_try(retry, exc, "conectar")

    async def handshake(self) -> None:
        """One try at connecting: HELLO, the CHALLENGE if any, the WELCOME."""
        self.handshakes += 1
        await self.drop()  # a second connect() replaces the line, never leaks it
        (host, port), where = self.servers.address, self.servers.where
        try:
            conn = await Connection.open(host, port, self.timeout, self._tls)
        except ssl.SSLError as exc:  # a certificate problem does not heal by retrying
            raise ConnectionLost(f"TLS with {where} failed: {exc}") from None
        try:
            reply = await shake_hands(conn, self.agency_id, self._secret, self.timeout, where)
            if self.draw is not None:
                await join_draw(conn, self.draw, self.timeout, self._log)
        except BaseException:
            await shielded(conn.close())
            raise
        self.conn = conn
        self.last_seq = reply.last_seq
        self.today = reply.today
        if not self.connected_once or self.resync:
            # A fresh process resumes after what an earlier run stored; after
            # abandoned requests, the server's count is the only sure one.
            self.next_seq = reply.last_seq + 1
            if not self.connected_once:
                self._log.info("ronda", result="in_progress", ronda=reply.round_id)
                self.resume = ResumeCheck.from_welcome(self.agency_id, reply, self._log)
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
        if not self.servers.retryable(exc):
            raise exc
        if not retry.failed():
            raise ConnectionLost(
                f"{what}: the connection to {self.servers.describe()} failed "
                f"{retry.failures} times in a row with no reply (last: {exc!r})"
            ) from None
        await self._next_try(retry, exc, "reconectar")

    async def _next_try(self, retry: Retry, exc: BaseException, action: str) -> None:
        """On to the next server at once, or, after a whole round with no reply, wait first."""
        self.servers.move_on(exc)
        if retry.round_over:
            delay = retry.next_delay()
            self._log.info(
                action, result="in_progress", intento=retry.failures,
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
