"""Every exception `lottery` raises on purpose, in one tree.

LotteryError
├── ConfigError          a setting has a bad value (the CLI exits 2)
├── InvalidBet           one bet breaks a rule; says which field and why
├── InvalidBatch         a batch holds an invalid bet; says its index (the
│                        batch is refused, the connection goes on)
├── ProtocolError        the peer sent bytes that break the wire protocol
│   ├── OutOfOrder       a well-formed frame the connection's state forbids
│   └── DrawMade         a bet after the draw was made
├── StoreError           the store could not save or read
└── AgencyError          the agency client could not finish its round
    ├── ServerRefused    the server answered a request with an error frame
    ├── AuthenticationRequired  the server asks for a secret this agency lacks
    ├── ConnectionLost   the server went away and reconnecting did not help
    ├── WinnersUnavailable  the winners query ran out of attempts
    ├── ResumeMismatch   a restarted agency's input does not start with the
    │                    bets already stored for it (another or changed file)
    └── RowsRejected     rows were rejected, so the agency did not say DONE

`ErrorCode` is the code an ERROR frame carries. It lives here, not in the
protocol module, because the exceptions carry it too: each `ProtocolError`
subclass knows the code the server answers it with, and `ServerRefused` the
code the server answered.
"""

from __future__ import annotations

import enum

__all__ = [
    "AgencyError",
    "AuthenticationRequired",
    "ConfigError",
    "ConnectionLost",
    "DrawMade",
    "ErrorCode",
    "InvalidBatch",
    "InvalidBet",
    "LotteryError",
    "OutOfOrder",
    "ProtocolError",
    "ResumeMismatch",
    "RowsRejected",
    "ServerRefused",
    "StoreError",
    "WinnersUnavailable",
]


class ErrorCode(enum.IntEnum):
    """The code carried by an ERROR frame (docs/PROTOCOL.md lists when each is sent)."""

    BAD_FRAME = 1  # the bytes break the protocol; the server closes the connection
    OUT_OF_ORDER = 2  # a frame the connection's state does not allow
    INVALID_BET = 3  # the batch holds an invalid bet; nothing of it was stored
    STORAGE = 4  # the store failed; the batch was not stored, resend it later
    TOO_MANY_CONNECTIONS = 5  # the server is at its connection limit
    SHUTTING_DOWN = 6  # the server is stopping
    BAD_SEQUENCE = 7  # a batch sequence skipped ahead of the last committed one
    BAD_VERSION = 8  # the handshake's protocol version is not spoken here
    UNKNOWN_AGENCY = 9  # the agency id is outside 1..N
    AUTH_FAILED = 10  # the agency's answer to the challenge is wrong, or it had none
    DRAW_MADE = 11  # the draw is made: no more bets
    BAD_COMMITMENT = 12  # a COMMIT or REVEAL refused (docs/DRAW.md); the connection goes on


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

    code: ErrorCode = ErrorCode.BAD_FRAME


class OutOfOrder(ProtocolError):
    """A well-formed frame that the connection's state does not allow (bets after done)."""

    code = ErrorCode.OUT_OF_ORDER


class DrawMade(ProtocolError):
    """A bet after the draw was made: it could no longer take part."""

    code = ErrorCode.DRAW_MADE


class InvalidBatch(LotteryError):
    """A run of records holds an invalid bet, so the whole batch is refused.

    Not a `ProtocolError`: the frame itself was well formed, so the connection
    stays open (the protocol turns it into a `RejectedBatch` event).
    """

    code = ErrorCode.INVALID_BET

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
        name = ErrorCode(code).name if code in ErrorCode._value2member_map_ else str(code)
        super().__init__(f"server refused ({name}): {message}")
        self.code = code
        self.server_message = message


class AuthenticationRequired(AgencyError):
    """The server authenticates agencies, and this agency was given no secret."""


class ConnectionLost(AgencyError):
    """The connection to the server failed and every reconnect attempt failed too."""


class WinnersUnavailable(AgencyError):
    """The winners query got no answer (not ready, or timed out) in every attempt."""


class ResumeMismatch(AgencyError):
    """The input's first rows are not the bets already stored for this agency.

    A restarted agency skips the input rows its earlier runs stored, and checks
    them against the agency digest the WELCOME carries; this is a mismatch.
    Nothing was sent.
    """


class RowsRejected(AgencyError):
    """Some rows were rejected: their valid neighbours are stored, DONE was not sent.

    The message says which rows and how to fix them and rerun (the agency
    resumes after the stored bets), or to allow the rejected rows.
    """
