"""The two tp0 CSV layouts: agency files in, the central's ``bets.csv`` out.

- Agency file: ``first_name,last_name,document,birthdate,number``, UTF-8, LF or
  CRLF line ends, RFC 4180 quoting (so a name may hold commas and quotes),
  one row per line (no valid field holds a line break).
  `AgencyFileReader` reads it in blocks of validated wire records and
  reports each bad row with its line.
- ``bets.csv``: ``agency,first_name,last_name,document,birthdate,number``, the
  layout tp0's ``store_bets`` writes (csv module defaults: minimal quoting,
  CRLF line ends). `write_bets_csv` / `read_bets_csv`.

Everything here is blocking file I/O: async callers run it in a worker thread.
"""

from __future__ import annotations

import csv
import datetime
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from .bulkmatch import csv_lines_valid
from .errors import InvalidBatch, InvalidBet, ProtocolError
from .models import (
    FS,
    RS,
    encode_record,
    has_forbidden_utf8,
    validate_records,
)

__all__ = [
    "FORMULA_STARTS",
    "AgencyFileReader",
    "RecordBlock",
    "RejectedRow",
    "excel_safe",
    "read_bets_csv",
    "write_bets_csv",
]


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A row of an agency file that was not sent, and why."""

    path: str
    line: int
    reason: str
    #: The row is not UTF-8: the file has the wrong encoding, and never counts as done.
    undecodable: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class RecordBlock:
    """Validated wire records, each ended by 0x1E, ready to be cut into batches.

    ``lines`` holds each record's input row (its line in the file, from 1),
    in order: where it is, for the resume position and for error messages.
    """

    data: bytes
    count: int
    lines: Sequence[int] = ()


_BOM = b"\xef\xbb\xbf"

# CSV line → wire record, once a line is known to be five plain fields.
_TO_RECORDS = bytes.maketrans(b",\n", (FS + RS).encode())


def _plain_lines_valid(data: bytes, crlf: bool, today: str) -> bool:
    """Whether every line of ``data`` (whole lines, none holding a quote) is a valid row.

    `bulkmatch.csv_lines_valid` checks each row's bytes, a name being any bytes but
    a comma or a control; what it cannot see in bytes is checked on the whole
    block at once: valid UTF-8 holding no C1 or format control.
    """
    if not data:
        return True
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError:
            return False
        if has_forbidden_utf8(data):
            return False
    return csv_lines_valid(data, crlf, today)


def _quoted_lines_to_records(lines: list[bytes], today: str) -> list[bytes] | None:
    """Each CSV line (each holding a quote) → its wire record; None unless all are valid.

    One csv reader goes through all of them: a line whose quote is not closed
    would take the next line in, which the row count shows.
    """
    try:
        text = b"".join(lines).decode()
        rows = list(csv.reader(text.split("\n")[:-1], strict=True))
    except (UnicodeDecodeError, csv.Error):
        return None
    if len(rows) != len(lines):
        return None
    body = "".join([FS.join(row) + RS for row in rows])
    try:
        validate_records(body, today)
    except (InvalidBatch, ProtocolError):
        return None
    records = body.encode().split(RS.encode())
    records.pop()  # after the last separator
    return [record + RS.encode() for record in records]


def _lines_to_records(data: bytes, today: str) -> bytes | None:
    """Whole CSV lines, each ended by LF → wire records, or None unless all are valid.

    The lines holding no quote, nearly all, are checked together in one
    regex pass and converted by one ``translate`` each run (CRs deleted: the
    pattern allows them only before a LF); the lines holding a quote go
    through the csv module, together.
    """
    first_end = data.find(b"\n")
    crlf = first_end > 0 and data[first_end - 1] == 0x0D
    if b'"' not in data:
        if not _plain_lines_valid(data, crlf, today):
            return None
        return data.translate(_TO_RECORDS, b"\r")
    runs: list[bytes] = []  # runs of plain lines; runs[i] comes before quoted[i]
    quoted: list[bytes] = []
    pos = 0
    while (quote := data.find(b'"', pos)) >= 0:
        start = data.rfind(b"\n", 0, quote) + 1
        end = data.index(b"\n", quote) + 1
        runs.append(data[pos:start])
        quoted.append(data[start:end])
        pos = end
    runs.append(data[pos:])
    if not _plain_lines_valid(b"".join(runs), crlf, today):
        return None
    records = _quoted_lines_to_records(quoted, today)
    if records is None:
        return None
    records.append(b"")
    parts = []
    for run, record in zip(runs, records, strict=True):
        parts.append(run.translate(_TO_RECORDS, b"\r"))
        parts.append(record)
    return b"".join(parts)


class AgencyFileReader:
    """Reads an agency file as blocks of validated wire records.

    `read_block` returns the next `RecordBlock` (about ``block_size`` bytes of
    whole lines), or None at the end of the file. Bad rows are in no block:
    they are appended to `rejected`, with their line number and the reason.

    A block is converted in bulk, in C: a few ``str.replace`` calls turn plain
    CSV into wire records (only lines holding a quote go through the csv
    module), and one regular expression validates the lot. Only a
    block holding a bad row is read again line by line, to say which and why.
    Each physical line is one row: no valid field holds a line break, so an
    unterminated quote spoils its own line and not the lines after it. A row's
    input position is its line number; `rows` is the lines read so far.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        block_size: int = 1 << 16,  # the block and its copies stay in the CPU's cache
        today: str | None = None,
    ) -> None:
        self.path = path
        self.block_size = block_size
        self.today = today or datetime.date.today().isoformat()
        self.rejected: list[RejectedRow] = []
        self.rows_read = 0
        self._name = os.fspath(path)
        self._file: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by close() / at EOF
        self._carry = b""  # the start of a line whose end is not read yet
        self._line = 0  # lines handed out so far
        self._at_start = True

    def read_block(self) -> RecordBlock | None:
        """The next block of valid records, or None at the end of the file."""
        while raw := self._next_lines():
            first_line = self._line + 1
            count = raw.count(b"\n") + (not raw.endswith(b"\n"))
            self._line += count
            block = self._convert(raw, first_line, count)
            block = block or self._convert_line_by_line(raw, first_line)
            if block.count:
                return block
        return None

    def _next_lines(self) -> bytes:
        """Whole lines, about ``block_size`` bytes of them; b"" at the end."""
        if self._file.closed:
            return b""
        data = self._carry
        while True:
            chunk = self._file.read(self.block_size)
            if self._at_start:
                self._at_start = False
                chunk = chunk.removeprefix(_BOM)
            if not chunk:  # end of file: the last line may lack its newline
                self.close()
                self._carry = b""
                return data
            data += chunk
            cut = data.rfind(b"\n") + 1
            if cut:  # else one line is longer than a block: read on
                self._carry = data[cut:]
                return data[:cut]

    @property
    def name(self) -> str:
        return self._name

    @property
    def rows(self) -> int:
        """Input rows (lines) read so far."""
        return self._line

    def _convert(self, raw: bytes, first_line: int, count: int) -> RecordBlock | None:
        """The fast path: the whole block at once, or None if any row may be bad."""
        if not raw.endswith(b"\n"):  # the file's last line, without its line end
            first_end = raw.find(b"\n")
            crlf = first_end > 0 and raw[first_end - 1] == 0x0D and not raw.endswith(b"\r")
            raw += b"\r\n" if crlf else b"\n"
        body = _lines_to_records(raw, self.today)
        if body is None:
            return None  # a bad row, a blank line, or a quote the csv module refuses
        self.rows_read += count
        # Every line is a record here (a blank line takes the slow path).
        return RecordBlock(body, count, range(first_line, first_line + count))

    def _convert_line_by_line(self, raw: bytes, first_line: int) -> RecordBlock:
        """The slow path: each line alone, so each bad row is named."""
        records: list[bytes] = []
        lines_of: list[int] = []
        text = raw.decode(errors="surrogateescape")  # bad UTF-8 fails its own row
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        for number, line in enumerate(lines, first_line):
            line = line.removesuffix("\r")
            if not line:  # blank line
                continue
            undecodable = _has_undecodable(line)
            try:
                row = next(csv.reader((line,), strict=True))
            except csv.Error as exc:
                self._reject(number, f"not valid CSV ({exc})", undecodable)
                continue
            self.rows_read += 1
            try:
                records.append(encode_record(row, self.today))
            except InvalidBet as exc:
                self._reject(number, str(exc), undecodable)
            else:
                lines_of.append(number)
        return RecordBlock(b"".join(records), len(records), lines_of)

    def _reject(self, line: int, reason: str, undecodable: bool = False) -> None:
        self.rejected.append(RejectedRow(self._name, line, reason, undecodable))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AgencyFileReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _has_undecodable(line: str) -> bool:
    """Whether ``line`` held bytes that are not UTF-8 (decoded with surrogateescape)."""
    return any("\udc80" <= ch <= "\udcff" for ch in line)


#: What makes a spreadsheet read a cell as a formula (OWASP's "CSV injection" list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def excel_safe(value: object) -> object:
    """``value``, with a leading ``'`` if it is text a spreadsheet would run as a formula.

    The quote is the spreadsheet's own "this is text" mark: Excel, LibreOffice
    and Google Sheets show the cell without it and never evaluate it.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_bets_csv(
    rows: Iterable[Iterable[object]], out: IO[str], *, excel_safe_cells: bool = False
) -> int:
    """Write stored bets in tp0's ``bets.csv`` layout; returns the row count.

    ``out`` must be opened with ``newline=""`` so the CRLF the csv module
    writes (as tp0's ``store_bets`` did) reaches the file unchanged.

    Names are exported exactly as stored (tp0's contract), so a name starting
    with ``=``, ``+``, ``-`` or ``@`` is a formula to a spreadsheet. With
    ``excel_safe_cells`` such cells get a leading ``'`` (`excel_safe`): the
    file is then for people to open, no longer byte-exact tp0.
    """
    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    count = 0
    for row in rows:
        writer.writerow([excel_safe(cell) for cell in row] if excel_safe_cells else row)
        count += 1
    return count


def read_bets_csv(path: str | os.PathLike[str]) -> Iterator[list[str]]:
    """The rows of a ``bets.csv`` file, each as six text fields."""
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.reader(f, strict=True)
