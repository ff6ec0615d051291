"""Every exception `lottery` raises on purpose, in one tree.

LotteryError
├── ConfigError          a setting has a bad value (the CLI exits 2)
├── InvalidBet           one bet breaks a rule; says which field and why
├── ProtocolError        the peer sent bytes that break the wire protocol
│   ├── OutOfOrder       a well-formed frame the connection's state forbids
│   ├── DrawMade         a bet after the draw was made
│   └── InvalidBatch     a batch holds an invalid bet; says its index
├── StoreError           the store could not save or read
└── AgencyError          the agency client could not finish its round
    ├── ServerRefused    the server answered a request with an error frame
    ├── AuthenticationRequired  the server asks for a secret this agency lacks
    ├── ConnectionLost   the server went away and reconnecting did not help
    └── WinnersUnavailable  the winners query ran out of attempts
"""

from __future__ import annotations

__all__ = [
    "AgencyError",
    "AuthenticationRequired",
    "ConfigError",
    "ConnectionLost",
    "DrawMade",
    "InvalidBatch",
    "InvalidBet",
    "LotteryError",
    "OutOfOrder",
    "ProtocolError",
    "ServerRefused",
    "StoreError",
    "WinnersUnavailable",
]


class LotteryError(Exception):
    """Base class of every error `lottery` raises on purpose."""


class ConfigError(LotteryError):
    """A configuration value is missing or wrong; the message names it."""


class InvalidBet(LotteryError):
    """A bet breaks a validation rule.

    Attributes:
        field: the name of the offending field (``first_name``, ``number``...).
        reason: what is wrong with it, in plain words.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ProtocolError(LotteryError):
    """The peer sent bytes that do not follow the wire protocol.

    Only the connection that sent them is affected: the server answers with an
    error frame and closes that one connection.
    """

    code = 1  # ErrorCode.BAD_FRAME; kept as a plain int so errors.py imports nothing


class OutOfOrder(ProtocolError):
    """A well-formed frame that the connection's state does not allow (bets after done)."""

    code = 2  # ErrorCode.OUT_OF_ORDER


class DrawMade(ProtocolError):
    """A bet after the draw was made: it could no longer take part."""

    code = 11  # ErrorCode.DRAW_MADE


class InvalidBatch(ProtocolError):
    """A batch (or single bet) holds an invalid bet, so the whole batch is refused.

    The connection stays open: the frame itself was well formed.
    """

    code = 3  # ErrorCode.INVALID_BET

    def __init__(self, index: int, bet_error: InvalidBet, count: int = 0) -> None:
        super().__init__(f"bet {index}: {bet_error}")
        self.index = index
        self.bet_error = bet_error
        self.count = count  # how many bets the refused batch announced


class StoreError(LotteryError):
    """The store failed to save or read bets (disk full, read-only, corrupt...)."""


class AgencyError(LotteryError):
    """The agency client could not complete its part of the round."""


class ServerRefused(AgencyError):
    """The server answered with an error frame."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"server refused (code {code}): {message}")
        self.code = code
        self.server_message = message


class AuthenticationRequired(AgencyError):
    """The server authenticates agencies, and this agency was given no secret."""


class ConnectionLost(AgencyError):
    """The connection to the server failed and every reconnect attempt failed too."""


class WinnersUnavailable(AgencyError):
    """The winners query got no answer (not ready, or timed out) in every attempt."""
