"""Where `AsyncAgency.send_bets` gets its bets: a CSV file or an iterable.

Both kinds of source become a `BlockReader`: something that hands out blocks
of validated, encoded records and keeps the rows it refused. A file is read
by `csvfiles.AgencyFileReader`; an iterable of `Bet` objects or five-field
rows by `IterableReader`. `open_reader` picks one for a `Source`.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import Iterable, Sequence
from typing import Protocol

from .csvfiles import AgencyFileReader, RecordBlock, RejectedRow
from .errors import InvalidBet
from .models import Bet
from .protocol import encode_record

__all__ = ["BlockReader", "IterableReader", "Source", "open_reader"]

#: What `send_bets` accepts: a CSV file's path, or bets and five-field rows.
Source = str | os.PathLike[str] | Iterable[Bet | Sequence[str]]


class BlockReader(Protocol):
    """A source of validated records (`csvfiles.AgencyFileReader` is one).

    Each block says each record's input row (from 1); `rows` is how many
    input rows were read so far, rejected ones included.
    """

    rejected: list[RejectedRow]

    @property
    def name(self) -> str: ...

    @property
    def rows(self) -> int: ...

    def read_block(self) -> RecordBlock | None: ...

    def close(self) -> None: ...


class IterableReader:
    """Reads bets from an iterable (`Bet` objects or five-field rows).

    A bet's input row is its index in the iterable, from 1.
    """

    name = "<bets>"

    def __init__(
        self,
        bets: Iterable[Bet | Sequence[str]],
        chunk_size: int = 4096,
        today: str | None = None,
    ) -> None:
        self._iterator = iter(bets)
        self._chunk_size = chunk_size
        self._index = 0
        self._today = today or datetime.date.today().isoformat()
        self.rejected: list[RejectedRow] = []

    @property
    def rows(self) -> int:
        return self._index

    def read_block(self) -> RecordBlock | None:
        records: list[bytes] = []
        lines: list[int] = []
        for item in self._iterator:
            self._index += 1
            fields = item.fields() if isinstance(item, Bet) else item
            try:
                records.append(encode_record(fields, self._today))
            except InvalidBet as exc:
                self.rejected.append(RejectedRow(self.name, self._index, str(exc)))
            else:
                lines.append(self._index)
            if len(records) >= self._chunk_size:
                break
        return RecordBlock(b"".join(records), len(records), lines) if records else None

    def close(self) -> None:
        pass


async def open_reader(source: Source, today: str | None = None) -> BlockReader:
    """A reader for ``source`` that validates as of ``today`` (ISO; default the local date).

    A file is opened in a worker thread, off the loop.
    """
    if isinstance(source, str | os.PathLike):
        return await asyncio.to_thread(AgencyFileReader, source, today=today)
    return IterableReader(source, today=today)
