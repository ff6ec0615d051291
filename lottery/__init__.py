"""lottery: an asyncio-native central server and agency client for a national lottery.

Layout (one job per module):

- `protocol`: the wire protocol, sans-I/O (bytes in, messages out, and back)
- `models`: the `Bet` and its validation rules
- `csvfiles`: tp0's agency files and ``bets.csv``
- `store`: durable storage behind the `Store` interface (SQLite by default)
- `committer`: group commit, and the store's thread, off the event loop
- `barrier`: the draw barrier (a counter plus an `asyncio.Event`)
- `server`: the central server (accept loop, per-connection handler, shutdown)
- `client`: `AsyncAgency`, the agency's client
- `config`, `log`, `cli`: settings, logging set-up, the ``lottery`` command
"""

__version__ = "0.1.0"

from .barrier import DrawBarrier
from .client import AsyncAgency, RoundResult, SendReport
from .config import AgencyConfig, ServerConfig
from .errors import (
    AgencyError,
    ConfigError,
    ConnectionLost,
    InvalidBatch,
    InvalidBet,
    LotteryError,
    ProtocolError,
    ResumeMismatch,
    RowsRejected,
    ServerRefused,
    StoreError,
    WinnersUnavailable,
)
from .models import Bet
from .server import Server
from .store import SQLiteStore, Store

__all__ = [
    "AgencyConfig",
    "AgencyError",
    "AsyncAgency",
    "Bet",
    "ConfigError",
    "ConnectionLost",
    "DrawBarrier",
    "InvalidBatch",
    "InvalidBet",
    "LotteryError",
    "ProtocolError",
    "ResumeMismatch",
    "RoundResult",
    "RowsRejected",
    "SQLiteStore",
    "SendReport",
    "Server",
    "ServerConfig",
    "ServerRefused",
    "Store",
    "StoreError",
    "WinnersUnavailable",
    "__version__",
]
