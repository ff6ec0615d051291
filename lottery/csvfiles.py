"""The two tp0 CSV layouts: agency files in, the central's ``bets.csv`` out.

- Agency file: ``first_name,last_name,document,birthdate,number``, UTF-8, LF or
  CRLF line ends, RFC 4180 quoting (so a name may hold commas and quotes),
  one row per line (no valid field holds a line break).
  `AgencyFileReader` reads it in chunks and reports each bad row with its line.
- ``bets.csv``: ``agency,first_name,last_name,document,birthdate,number``, the
  layout tp0's ``store_bets`` writes (csv module defaults: minimal quoting,
  CRLF line ends). `write_bets_csv` / `read_bets_csv`.

Everything here is blocking file I/O: async callers run it in a worker thread.
"""

from __future__ import annotations

import csv
import datetime
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from .errors import InvalidBet
from .protocol import encode_record

__all__ = ["AgencyFileReader", "RejectedRow", "read_bets_csv", "write_bets_csv"]


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A row of an agency file that was not sent, and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class AgencyFileReader:
    """Reads an agency file as validated wire records, a chunk at a time.

    Each call to `read_chunk` returns up to ``chunk_size`` encoded records
    (see `lottery.protocol.encode_record`) and an empty list at the end. Bad
    rows are not returned; they are appended to `rejected`.
    """

    path: str | os.PathLike[str]
    chunk_size: int = 4096
    today: str = field(default_factory=lambda: datetime.date.today().isoformat())
    rejected: list[RejectedRow] = field(default_factory=list)
    rows_read: int = 0

    def __post_init__(self) -> None:
        # surrogateescape: a byte that is not UTF-8 fails its row, not the file.
        self._file: IO[str] = open(  # noqa: SIM115 - closed by close() / at EOF
            self.path, newline="", encoding="utf-8-sig", errors="surrogateescape"
        )
        self._name = os.fspath(self.path)
        self._line = 0

    def read_chunk(self) -> list[bytes]:
        """Up to ``chunk_size`` valid records; an empty list means end of file."""
        records: list[bytes] = []
        if self._file.closed:
            return records
        append = records.append
        readline, today = self._file.readline, self.today
        while len(records) < self.chunk_size:
            line = readline()
            if not line:
                self.close()
                break
            self._line += 1
            # One physical line at a time: no valid field holds a line break, so
            # an unterminated quote spoils its own line, not every line after it.
            try:
                row = next(csv.reader((line,), strict=True), [])
            except csv.Error as exc:
                self._reject(self._line, f"not valid CSV ({exc})")
                continue
            if not row:  # blank line, e.g. a trailing newline
                continue
            self.rows_read += 1
            try:
                append(encode_record(row, today))
            except InvalidBet as exc:
                self._reject(self._line, str(exc))
        return records

    def _reject(self, line: int, reason: str) -> None:
        self.rejected.append(RejectedRow(self._name, line, reason))

    def close(self) -> None:
        self._file.close()


def write_bets_csv(rows: Iterable[Iterable[object]], out: IO[str]) -> int:
    """Write stored bets in tp0's ``bets.csv`` layout; returns the row count.

    ``out`` must be opened with ``newline=""`` so the CRLF the csv module
    writes (as tp0's ``store_bets`` did) reaches the file unchanged.
    """
    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    count = 0
    for row in rows:
        writer.writerow(row)
        count += 1
    return count


def read_bets_csv(path: str | os.PathLike[str]) -> Iterator[list[str]]:
    """The rows of a ``bets.csv`` file, each as six text fields."""
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.reader(f, strict=True)
