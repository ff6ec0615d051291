"""Durable storage of bets, agency progress and the draw.

Layout: `base` states the contract every backend keeps (read its docstring
before writing one) as `Store` (blocking) and `AsyncStore` (awaited);
`sqlite` is the embedded default, `SQLiteStore`; `threaded` runs a blocking
store on a thread of its own, `ThreadedStore`; `postgres` is the store
several servers share, `PostgresStore` (asyncpg, a `SharedStore`).
"""

from __future__ import annotations

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
from .postgres import PostgresStore, is_postgres_dsn
from .sqlite import DB_FILENAME, SYNC_MODES, SQLiteStore
from .threaded import ThreadedStore

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
