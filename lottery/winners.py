"""The agency's winners query: asking until the draw is made, within bounds.

`AsyncAgency.winners` is `poll_winners` over the agency's `Session`. Three
bounds stop the loop: "not ready" answers (the server is there, the draw is
not) against ``attempts``, waiting at least half a second between them; the
whole wait for the draw against ``wait`` seconds; and tries with no answer (a
lost line, a time-out) against the session's reconnect attempts, as in every
retry loop of the agency. Each NOT_READY says which agencies the draw still
waits for: the log and ``on_not_ready`` (the progress bar) show them.

In a random draw (docs/DRAW.md) the server may answer REVEAL_WANTED: betting
has closed and it wants this agency's nonce. The agency reveals it at once
and asks again; that answer counts against neither bound. The winners of a
random draw come after a RECEIPT, which is checked against the agency's own
digest of what the server acknowledged (``action: recibo``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .backoff import Retry
from .connection import Connection, raise_for
from .drawsession import reveal
from .errors import WinnersUnavailable
from .log import get_logger
from .protocol import NotReady, Receipt, RevealWanted, Winners, WinnersQuery
from .session import Session

__all__ = ["missing_text", "poll_winners"]


def missing_text(reply: NotReady) -> str:
    """ "agencies 3, 5 missing" (the first 20 named), for the log and the progress bar."""
    shown = ", ".join(map(str, reply.agencies[:20]))
    more = " …" if reply.missing > min(len(reply.agencies), 20) else ""
    noun = "agency" if reply.missing == 1 else "agencies"
    return f"{noun} {shown}{more} missing" if shown else f"{reply.missing} {noun} missing"


async def query_winners(
    conn: Connection,
    timeout: float,
    winners_timeout: float,
    on_receipt: Callable[[Receipt], None] | None = None,
) -> list[str] | NotReady | RevealWanted:
    """One query: the documents of every WINNERS frame, or the NOT_READY answer.

    A random draw's server may answer `RevealWanted` instead, and sends a
    `Receipt` before the winners (given to ``on_receipt``).
    """
    reply = await conn.request(WinnersQuery(), timeout)
    if isinstance(reply, RevealWanted):
        return reply
    if isinstance(reply, Receipt):
        if on_receipt is not None:
            on_receipt(reply)
        reply = await conn.receive(winners_timeout)
    documents: list[str] = []
    while isinstance(reply, Winners):
        documents.extend(reply.documents)
        if reply.last:
            return documents
        reply = await conn.receive(winners_timeout)  # the caller's wait_for bounds it too
    if not isinstance(reply, NotReady):
        raise_for(reply)
    return reply


async def poll_winners(
    session: Session,
    *,
    attempts: int,
    base_delay: float,
    timeout: float,
    wait: float = 600.0,
    on_not_ready: Callable[[NotReady], None] | None = None,
) -> list[str]:
    """Ask ``session``'s server for the winners until it answers with them.

    Each try, as a whole, waits up to ``timeout`` seconds; no try starts
    after ``wait`` seconds, so the whole wait is at most ``wait + timeout``.

    Raises:
        WinnersUnavailable: ``attempts`` answers were "not ready", or ``wait``
            seconds passed; the message names the agencies still missing.
        ConnectionLost: the session's attempts in a row got no answer.
    """
    # NOT_READY means the server is there and the draw is not: no jitter down
    # to zero, or the agency would ask again at once.
    log = get_logger(agencia=session.agency_id)
    not_ready = Retry(attempts, base_delay, floor=0.5)
    no_reply = session.retry()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    receipts: list[Receipt] = []
    reveals = 0
    while True:
        try:
            conn = await session.ensure_open()
            # One try, bounded as a whole: the send, the server's wait for
            # the draw, and every WINNERS frame of the answer.
            query = query_winners(conn, session.timeout, timeout, receipts.append)
            answer = await asyncio.wait_for(query, timeout)
            draw = session.draw
            if isinstance(answer, RevealWanted) and draw is not None and draw.can_reveal:
                reveals += 1
                if reveals <= attempts:  # bounded: the server asks once per nonce
                    await reveal(session)
                    continue
        except Exception as exc:  # a late reply would be read as the next query's
            await session.retry_or_raise(no_reply, exc, "the winners query")
            continue
        except BaseException:
            await session.drop()
            raise
        if isinstance(answer, list):
            log.info("consulta_ganadores", result="success", cant_ganadores=len(answer))
            if receipts and session.draw is not None:
                _check_receipt(session, receipts[-1])
            return answer
        no_reply.reset()  # NOT_READY is an answer
        if isinstance(answer, RevealWanted):
            # Nothing (more) to reveal: wait for the draw as for "not ready".
            waiting = "the reveals of the other agencies"
        else:
            if on_not_ready is not None:
                on_not_ready(answer)
            waiting = missing_text(answer)
        # Checked between tries, so the whole wait is at most `wait` plus one try.
        left = deadline - loop.time()
        if not not_ready.failed() or left <= 0:
            spent = f"{not_ready.failures} attempts" if left > 0 else f"{wait:g} s"
            raise WinnersUnavailable(f"no winners after {spent}: the draw waits for {waiting}")
        pause = min(not_ready.next_delay(), left)
        log.info(
            "consulta_ganadores", result="in_progress", intento=not_ready.failures,
            motivo=f"waiting for the draw: {waiting}", espera=round(pause, 3),
        )  # fmt: skip
        await not_ready.wait(pause)


def _check_receipt(session: Session, receipt: Receipt) -> None:
    """Compare the server's receipt with the agency's own digest, and log it."""
    assert session.draw is not None
    check = session.draw.check(receipt.bets, receipt.digest)
    log = get_logger(agencia=session.agency_id)
    fields = {
        "apuestas_servidor": check.server_bets,
        "apuestas_agencia": check.own_bets,
        "digesto_servidor": check.server_digest.hex(),
        "digesto_agencia": check.own_digest.hex(),
    }
    if check.ok:
        log.info("recibo", result="success", **fields)
    else:
        log.error("recibo", result="fail", **fields)
