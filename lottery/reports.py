"""What the agency's calls report: `SendReport` for `send_bets`, `RoundResult` for `run`.

Plain data, kept apart from the code that fills it in (lottery/sender.py and
lottery/client.py); both are re-exported by `lottery.client` and `lottery`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .csvfiles import RejectedRow

__all__ = ["RoundResult", "SendReport"]


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
