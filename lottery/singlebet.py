"""The single-bet path (tp0 ej5): `AsyncAgency.send_bet`, one bet per request.

`send_single` validates one bet as of the round's date, skips it if an
earlier run of this agency stored it (each call is one input row for
resuming, lottery/resume.py), and otherwise sends it as a SINGLE_BET over the
`Session`, retrying as every loop does, until the server acknowledges it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .models import Bet
from .protocol import Ack, SingleBet, encode_record
from .session import Session

__all__ = ["send_single"]


async def send_single(session: Session, bet: Bet | Sequence[str], log: Any) -> None:
    """Send ``bet`` on its own and wait until it is stored (see `AsyncAgency.send_bet`)."""
    fields = bet.fields() if isinstance(bet, Bet) else tuple(bet)
    await session.ensure_open()  # the WELCOME says the round's date
    # Validates, raising InvalidBet before anything is sent.
    encoded = encode_record(fields, session.today)
    await _send_record(session, tuple(fields), encoded)
    log.info("apuesta_enviada", result="success", dni=fields[2], numero=int(fields[4]))


async def _send_record(session: Session, record: tuple[str, ...], encoded: bytes) -> None:
    """Send one validated bet on its own, unless an earlier run already stored it.

    Each call is one input row. ``encoded`` is its record (`encode_record`).

    Raises:
        ResumeMismatch: the bets before it are not the ones stored.
    """
    await session.ensure_open()
    session.position += 1
    _, _, stored = session.resume.take(encoded, (session.position,))
    if stored:  # stored by an earlier run of this agency
        if session.draw is not None:  # acknowledged by the WELCOME: in the receipt
            session.draw.digest.update(encoded, 1)
        if session.position >= session.resume.input_rows:
            session.resume.check()
        return
    seq, session.next_seq = session.next_seq, session.next_seq + 1
    single = SingleBet(seq, record, session.position)  # type: ignore[arg-type]
    await session.round_trip(single, lambda reply: reply == Ack(seq))
    if session.draw is not None:  # the receipt will cover it
        session.draw.digest.update(encoded, 1)
