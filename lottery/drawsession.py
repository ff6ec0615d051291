"""The agency's side of a random draw's handshake and reveal (docs/DRAW.md).

`join_draw` runs after each WELCOME: it asks how the round is drawn
(DRAW_QUERY, answered by DRAW_INFO) and, in a random round, commits to the
agency's nonce (COMMIT, answered by ACK 0 or by a BAD_COMMITMENT refusal,
after which the agency counts as not revealing). `reveal` sends the nonce
when the server asks for it with REVEAL_WANTED. Both live beside `Session`
rather than in it, so that the session stays about connecting.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .connection import Connection, raise_for
from .errors import ProtocolError
from .log import get_logger
from .participant import DrawParticipant
from .protocol import Ack, Commit, DrawInfo, DrawQuery, Error, ErrorCode, Message, Reveal

if TYPE_CHECKING:
    from .session import Session

__all__ = ["join_draw", "reveal"]


async def join_draw(conn: Connection, draw: DrawParticipant, timeout: float, log: Any) -> None:
    """After WELCOME: how is the round drawn? In a random round, commit.

    Raises:
        ServerRefused: the server answered the query or the commitment with
            an ERROR other than BAD_COMMITMENT and STORAGE.
        StorageFault: it answered STORAGE (retried, as after a lost line).
        ProtocolError: it answered with another frame.
    """
    info = await conn.request(DrawQuery(), timeout)
    if isinstance(info, Error):
        raise_for(info)  # STORAGE: a store that failed now (a shared one restarting): retried
    if not isinstance(info, DrawInfo):
        raise ProtocolError(f"expected DRAW_INFO, got {type(info).__name__}")
    draw.mode = info.mode
    if info.mode != "random":
        return
    first = draw.server_commitment is None
    await asyncio.to_thread(draw.nonce_for, info.commitment)  # kept before it is sent
    mine = draw.commitment()
    reply = await conn.request(Commit(mine), timeout)
    if isinstance(reply, Error) and reply.code == ErrorCode.BAD_COMMITMENT:
        if not draw.refused:
            log.error("compromiso_sorteo", result="fail", motivo=reply.message,
                      compromiso=mine.hex())  # fmt: skip
        draw.refused = True  # it counts as not revealing; its bets still count
    elif reply != Ack(0):
        if isinstance(reply, Error):
            raise_for(reply)  # STORAGE: the commitment was not stored; the agency retries
        raise ProtocolError(f"expected ACK to COMMIT, got {type(reply).__name__}")
    if first:
        log.info(
            "compromiso_sorteo", result="success", servidor=info.commitment.hex(),
            agencia=mine.hex(),
        )  # fmt: skip


async def reveal(session: Session) -> None:
    """Send the session's nonce (the server asked for it: betting has closed)."""
    draw = session.draw
    assert draw is not None and draw.nonce is not None
    replies: list[Message] = []

    def answered(reply: Message) -> bool:
        refused = isinstance(reply, Error) and reply.code == ErrorCode.BAD_COMMITMENT
        if reply == Ack(0) or refused:
            replies.append(reply)
            return True
        return False

    await session.round_trip(Reveal(draw.nonce), answered)
    log = get_logger(agencia=session.agency_id)
    if replies[-1] == Ack(0):
        draw.revealed = True
        log.info("revelacion", result="success", nonce=draw.nonce.hex())
    else:
        draw.refused = True
        reason = replies[-1].message if isinstance(replies[-1], Error) else ""
        log.error("revelacion", result="fail", motivo=reason)
