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

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# What each public name is imported from. They load on first use (PEP 562), so
# `lottery agency --help` and an agency never import the server, its store or
# asyncio's server side; ``from lottery import Server`` works as before.
_EXPORTS = {
    "DrawBarrier": "barrier",
    "AsyncAgency": "client",
    "RoundResult": "client",
    "SendReport": "client",
    "AgencyConfig": "config",
    "ServerConfig": "config",
    "AgencyError": "errors",
    "ConfigError": "errors",
    "ConnectionLost": "errors",
    "InvalidBatch": "errors",
    "InvalidBet": "errors",
    "LotteryError": "errors",
    "ProtocolError": "errors",
    "ResumeMismatch": "errors",
    "RowsRejected": "errors",
    "ServerRefused": "errors",
    "StoreError": "errors",
    "WinnersUnavailable": "errors",
    "Bet": "models",
    "Server": "server",
    "SQLiteStore": "store",
    "Store": "store",
}

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lottery' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup skips this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


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
