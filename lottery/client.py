"""`AsyncAgency`: an agency's client for the central server.

::

    async with AsyncAgency(agency_id, host, port) as agency:
        await agency.send_bets("agency-1.csv")   # a path, or an iterable of bets
        await agency.notify()                    # "I am done"
        winners = await agency.winners()         # my winners' documents

or ``await agency.run(path)`` for all three. An agency may be given the
round's servers, ``AsyncAgency(agency_id, servers=[("a", 12345), ("b", 12345)])``:
it moves to the next one when the one in use stops answering (lottery/session.py).

The class is a thin front over two parts: a `Session` (lottery/session.py:
connecting, the handshake, reconnecting, what the WELCOME says) and a
`BatchSender` (lottery/sender.py: the reader, cutter and window behind
`send_bets`). What follows the bets (`notify`, `winners`, `receipt`, `run`)
is mixed in from lottery/roundend.py, the single-bet path is
lottery/singlebet.py, the winners query's loop is lottery/winners.py; what
the calls return is lottery/reports.py. Every retry loop counts its fruitless tries
against ``reconnect_attempts`` and waits as lottery/backoff.py says.

When a connection opens for the first time, the handshake also says where
in its input this agency's earlier runs stopped (a restarted agency process):
that many input rows (valid or not) are skipped from the start of what
`send_bets` is given, after checking that their valid bets are the ones
stored (lottery/resume.py). Every bet is validated as of the round's date,
which the handshake says too.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from .backoff import MAX_BACKOFF
from .connection import query_status, tls_context
from .log import get_logger
from .models import Bet
from .participant import DrawParticipant
from .readers import Source
from .reports import RoundResult, SendReport
from .roundend import RoundEnd
from .sender import BatchSender
from .session import Session
from .singlebet import send_single

__all__ = ["MAX_BACKOFF", "AsyncAgency", "RoundResult", "SendReport", "query_status", "tls_context"]


class AsyncAgency(RoundEnd):
    """An agency's connection to the central server. Use with ``async with``.

    Args:
        agency_id: this agency's id (1..N); the server files every bet under it.
        host, port: the central server.
        servers: the round's servers, ``(host, port)`` each, instead of
            ``host`` and ``port``: all serve one round (a shared store). The
            agency uses the first that answers, and on a lost line, a time-out
            or a refusal that allows a retry moves to the next (round robin),
            resuming from what that server's WELCOME says is stored.
        batch_max_amount: most bets per batch (tp0 ``batch.maxAmount``); a batch
            is also cut before it would exceed the 8 KiB frame limit.
        max_in_flight: batches sent before their acks return (``--max-in-flight``).
        timeout: seconds for connecting and for each reply.
        winners_attempts: tries of the winners query (the seed's client made 5).
        winners_base_delay: first back-off delay between tries, doubled each try.
        winners_timeout: seconds to wait for one winners reply (the server holds
            a query up to 30 s by default before answering "not ready").
        winners_wait: seconds to wait for the draw in all, then give up naming
            the agencies still missing.
        reconnect_attempts: tries to reach the server when it is unreachable;
            with several servers, rounds through the list (each server once).
        secret: this agency's secret, for a server started with ``--secrets``
            (see `lottery.auth`); it never crosses the wire.
        tls: an `ssl.SSLContext` (see `tls_context`) for a server started
            with ``--tls-cert``; None for plain TCP.
        draw: this agency's part in a random draw (docs/DRAW.md): it asks how
            the round is drawn, commits to a nonce, reveals it, and checks the
            server's receipt. None: an agency that never asks how the round
            is drawn: fine in a fixed round; a random-draw server refuses it
            at its first bet.
    """

    def __init__(
        self,
        agency_id: int,
        host: str = "127.0.0.1",
        port: int = 12345,
        *,
        servers: Sequence[tuple[str, int]] | None = None,
        batch_max_amount: int = 200,
        max_in_flight: int = 16,
        timeout: float = 30.0,
        winners_attempts: int = 5,
        winners_base_delay: float = 0.5,
        winners_timeout: float = 40.0,
        winners_wait: float = 600.0,
        reconnect_attempts: int = 10,
        reconnect_base_delay: float = 0.05,
        secret: bytes | None = None,
        tls: ssl.SSLContext | None = None,
        draw: DrawParticipant | None = None,
    ) -> None:
        if batch_max_amount < 1 or max_in_flight < 1 or winners_attempts < 1:
            raise ValueError("batch_max_amount, max_in_flight and winners_attempts must be ≥ 1")
        self.agency_id = agency_id
        self.batch_max_amount, self.max_in_flight = batch_max_amount, max_in_flight
        self.timeout = timeout
        self.winners_attempts = winners_attempts
        self.winners_base_delay = winners_base_delay
        self.winners_timeout = winners_timeout
        self.winners_wait = winners_wait
        self.waiting_for = None  # whom the draw waits for (lottery/roundend.py)
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_base_delay = reconnect_base_delay
        servers = [(host, port)] if servers is None else servers
        self._session = Session(
            agency_id, servers, timeout=timeout, attempts=reconnect_attempts,
            base_delay=reconnect_base_delay, secret=secret, tls=tls, draw=draw,
        )  # fmt: skip
        self._sender = BatchSender(self._session, batch_max_amount, max_in_flight)
        self._log = get_logger(agencia=agency_id)

    def __repr__(self) -> str:
        return f"<AsyncAgency id={self.agency_id} {self._session!r} {self._sender!r}>"

    # The server in use lives in the session, which moves along the list.
    host = property(lambda self: self._session.servers.host)
    port = property(lambda self: self._session.servers.port)
    servers = property(lambda self: list(self._session.servers.servers))
    # The counters live where they are counted; a progress display reads them here.
    reconnects = property(lambda self: self._session.reconnects)
    batches_sent = property(lambda self: self._sender.batches_sent)
    bets_read = property(lambda self: self._sender.bets_read)
    bets_sent = property(lambda self: self._sender.bets_sent)
    bets_acknowledged = property(lambda self: self._sender.bets_acknowledged)
    #: Seconds from sending each batch to its ack (the latest 100,000).
    ack_latencies = property(lambda self: self._sender.ack_latencies)

    # -- connection ----------------------------------------------------------------------

    async def __aenter__(self) -> AsyncAgency:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Connect and shake hands, retrying with back-off.

        Raises:
            ConnectionLost: the server could not be reached in any attempt.
            ServerRefused: the server refused this agency (bad id, version...).
        """
        await self._session.connect()

    async def aclose(self) -> None:
        """Close the connection, even when cancelled meanwhile. Safe to call more than once."""
        await self._session.drop()

    # -- bets ----------------------------------------------------------------------------

    async def send_bet(self, bet: Bet | Sequence[str]) -> None:
        """Send one bet on its own (tp0 ej5) and wait until it is stored.

        Each call is one input row for resuming: a restarted agency skips as
        many calls as its earlier runs stored.

        Raises:
            InvalidBet: the bet breaks a rule (as of the round's date); nothing was sent.
            ResumeMismatch: the bets sent before it are not the ones stored.
            ConnectionLost: ``reconnect_attempts`` tries in a row got no reply.
        """
        await send_single(self._session, bet, self._log)

    async def send_bets(self, source: Source) -> SendReport:
        """Send every valid bet of ``source`` and wait until all are stored.

        Args:
            source: an agency CSV file's path, or an iterable of `Bet` objects
                or five-field rows.

        Returns:
            A `SendReport`; invalid rows (and any bet the server refused as
            invalid) are listed in ``rejected`` (and logged), not stored.

        Raises:
            ResumeMismatch: the source does not start with the bets already stored.
            ConnectionLost: ``reconnect_attempts`` tries in a row got no batch acknowledged.
            ServerRefused: the server refused a batch.
        """
        return await self._sender.send_source(source)
