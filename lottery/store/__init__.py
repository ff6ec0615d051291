"""Durable storage of bets, agency progress and the draw.

Layout: `base` states the contract every backend keeps (read its docstring
before writing one) as `Store` (blocking) and `AsyncStore` (awaited);
`sqlite` is the embedded default, `SQLiteStore`; `threaded` runs a blocking
store on a thread of its own, `ThreadedStore`; `postgres` is the store
several servers share, `PostgresStore` (asyncpg, a `SharedStore`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import is_postgres_dsn
from .base import (
    AsyncStore,
    DrawState,
    Outcome,
    PendingBatch,
    Progress,
    RoundView,
    SharedStore,
    Store,
)
from .sqlite import DB_FILENAME, SYNC_MODES, SQLiteStore
from .threaded import ThreadedStore

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = [
    "DB_FILENAME",
    "SYNC_MODES",
    "AsyncStore",
    "DrawState",
    "Outcome",
    "PendingBatch",
    "PostgresStore",
    "Progress",
    "RoundView",
    "SQLiteStore",
    "SharedStore",
    "Store",
    "ThreadedStore",
    "is_postgres_dsn",
]


def __getattr__(name: str) -> Any:
    # PostgresStore imports asyncpg, 30 ms of every server's start-up: loaded
    # on first use (PEP 562), so a server on SQLite never imports it.
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
