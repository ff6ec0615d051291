"""A bet the server refuses as invalid, in the middle of a stream of batches.

The server answers ERROR ``INVALID_BET`` naming the refused bet's index in
the oldest batch in flight (which should not happen: both sides validate as
of the round's date). `refused_bet` reads that answer; `leave_out` reports
the bet with its file and line, like a row the reader rejected, and takes it
out: the batches from it on were not stored, so they are renumbered and the
sender (lottery/sender.py) sends them again without it.
"""

from __future__ import annotations

import re
from typing import Any

from .csvfiles import RejectedRow
from .errors import ErrorCode, ProtocolError
from .protocol import Error, Message
from .reports import SendReport
from .window import Window

__all__ = ["RefusedBet", "leave_out", "refused_bet"]

_REFUSAL = re.compile(r"bet (\d+): (.*)", re.S)  # RejectedBatch.error()'s message


class RefusedBet(Exception):
    """Internal: the server refused bet ``index`` of the oldest batch in flight."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"bet {index}: {reason}")
        self.index = index
        self.reason = reason


def refused_bet(reply: Message) -> RefusedBet | None:
    """The refusal ``reply`` is, if it is an INVALID_BET naming a bet; else None."""
    if not isinstance(reply, Error) or reply.code != ErrorCode.INVALID_BET:
        return None
    match = _REFUSAL.fullmatch(reply.message)
    return RefusedBet(int(match[1]), match[2]) if match is not None else None


def leave_out(
    window: Window, refused: RefusedBet, report: SendReport, name: str, base: int, log: Any
) -> int:
    """Drop the refused bet from the oldest batch in flight; renumber the batches.

    The server stored none of the batches from the refused one on (each
    later one skipped ahead of it), so they take its sequence onwards.
    ``name`` is the source's, ``base`` its first input position.

    Returns:
        The sequence number the next new batch takes.
    """
    items = [window.unacked[seq] for seq in sorted(window.unacked)]
    if not items or not 0 <= refused.index < items[0].count:
        raise ProtocolError(f"the server refused a bet no batch in flight holds: {refused}")
    first = items[0]
    line = first.lines[refused.index]
    row = RejectedRow(name, line - base, f"refused by the server: {refused.reason}")
    report.rejected.append(row)
    log.warning(
        "apuesta_rechazada", result="fail", archivo=row.path, linea=row.line, motivo=row.reason
    )
    records = first.records.split(b"\x1e")[:-1]
    del records[refused.index]
    first.records = b"".join(r + b"\x1e" for r in records)
    first.lines = [n for i, n in enumerate(first.lines) if i != refused.index]
    first.count -= 1
    if not first.count:
        items.pop(0)
    window.unacked.clear()
    seq = first.seq
    for item in items:
        item.seq, seq = seq, seq + 1
        window.unacked[item.seq] = item
    return seq
