"""`BlockingPostgres`: a `PostgresStore` for plain blocking code (the export, verify, draw).

The commands that read a finished round (``lottery export``, ``verify``,
``draw --beacon``) are written against `SQLiteStore`, which blocks. This
gives them the same few methods over a `PostgresStore`, each run to
completion on an event loop of its own (`asyncio.Runner`) in the calling
thread; `bets` pulls the rows in chunks, so ten million bets never sit in
memory at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from .base import DrawState
from .postgres import FETCH_ROWS, PostgresStore

__all__ = ["BlockingPostgres"]

_Bet = tuple[int, str, str, str, str, int]


async def _chunk(rows: AsyncIterator[_Bet]) -> list[_Bet]:
    chunk: list[_Bet] = []
    async for row in rows:
        chunk.append(row)
        if len(chunk) == FETCH_ROWS:
            break
    return chunk


class BlockingPostgres:
    """The reading side of a `PostgresStore` (`StoreError`/`ConfigError` as it raises them)."""

    def __init__(self, dsn: str) -> None:
        self._runner = asyncio.Runner()
        try:
            self._store = self._runner.run(PostgresStore.open(dsn, create=False))
        except BaseException:
            self._runner.close()
            raise
        self.draw_mode = self._store.draw_mode
        self.where = self._store.where

    def bets(self) -> Iterator[_Bet]:
        """Every stored bet in store order, as `SQLiteStore.bets` yields them."""
        rows = self._store.bets()
        try:
            while chunk := self._runner.run(_chunk(rows)):
                yield from chunk
        finally:
            self._runner.run(rows.aclose())

    def draw_state(self) -> DrawState:
        return self._runner.run(self._store.draw_state())

    def round_agencies(self) -> int:
        return self._store.agencies

    def set_beacon(self, beacon: bytes) -> None:
        self._runner.run(self._store.set_beacon(beacon))

    def close(self) -> None:
        try:
            self._runner.run(self._store.aclose())
        finally:
            self._runner.close()
