"""The bet and its validation rules.

`Bet` is the value type. `validate_fields` checks the five text fields of an
agency file row and says which field is wrong and why. `Records` holds many
bets as one text, the *record* form that the wire protocol carries and the
store keeps: each bet's five fields joined by 0x1F (`FS`), each bet ended by
0x1E (`RS`). Those are control characters, which no valid field may hold, so
the form needs no quoting or escaping. The rules also exist as
regular-expression fragments (`field_patterns`) so that a whole batch is
checked in one C-level regex pass, calendar and "not in the future" included,
falling back to `validate_fields` only to explain a failure; both must agree,
and the tests check that they do.

Birthdates stay ISO text (``YYYY-MM-DD``) from the file to the store and back:
nothing ever turns them into a timestamp, so no time zone can move them a day.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import InvalidBatch, InvalidBet, ProtocolError

__all__ = [
    "DEFAULT_WINNING_NUMBER",
    "DIGEST_SIZE",
    "EMPTY_DIGEST",
    "FIELDS",
    "FS",
    "RS",
    "Bet",
    "Record",
    "Records",
    "RunningDigest",
    "agency_digest",
    "birthdate_problem",
    "csv_rows_pattern",
    "encode_record",
    "field_patterns",
    "has_forbidden_utf8",
    "validate_fields",
    "validate_records",
]

#: Between the fields of a record, and after each record.
FS = "\x1f"
RS = "\x1e"

#: A bet's five agency-file fields, as text.
Record = tuple[str, str, str, str, str]

#: tp0's fixed winning number, the default draw (see lottery.config for the setting).
DEFAULT_WINNING_NUMBER = 7574

#: Size of an agency digest (SHA-256).
DIGEST_SIZE = 32


class RunningDigest(Protocol):
    """What `agency_digest` returns: a hashlib hash object, fed as bets are stored."""

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...

    def copy(self) -> RunningDigest: ...


def agency_digest(records: bytes = b"") -> RunningDigest:
    """The running *agency digest*, started on ``records``; feed it more with ``update``.

    The agency digest of an agency is SHA-256 over the record text of every
    bet stored for it, in sequence order: each bet's five fields joined by
    0x1F and ended by 0x1E, UTF-8, exactly the bytes the wire carries, one
    bet after the other with nothing in between. No bets: ``sha256(b"")``.
    The store keeps one per agency and the WELCOME carries it, so a
    restarted agency can check that its file still starts with the bets
    already stored; the round's receipts use the same definition.
    """
    import hashlib  # here: `lottery agency --help` needs no OpenSSL (start-up time)

    return hashlib.sha256(records)


#: The agency digest of no bets at all.
EMPTY_DIGEST = bytes.fromhex(  # SHA-256 of nothing, written out: no hashlib at import
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

#: The agency-file columns, in order (tp0's layout).
FIELDS = ("first_name", "last_name", "document", "birthdate", "number")

MAX_NAME_LENGTH = 100
# C0 controls, DEL and C1 controls. The wire protocol uses two C0 controls as
# separators, so forbidding them in names is also what keeps framing unambiguous.
# Surrogates are what undecodable bytes become when a file is read with
# errors="surrogateescape": refusing them here turns bad UTF-8 into a bad row.
_CONTROL = "\x00-\x1f\x7f-\x9f\ud800-\udfff"
# Format controls that change how the text *around* a name reads: the line and
# paragraph separators break a line in editors and in JSON-as-JavaScript, and
# the bidirectional marks, embeddings, overrides and isolates (U+202E turns
# "gpj.exe" into "exe.jpg" on screen) let a name disguise its own row in a
# spreadsheet or a log. No real name needs them, so they count as controls.
_FORMAT_CONTROL = "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
#: What no name may hold, as the body of a regex class: controls, format controls.
NAME_FORBIDDEN = _CONTROL + _FORMAT_CONTROL
_FORMAT_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)

# Month-day pairs that exist in every year, the commonest first (sre tries the
# branches in order): days 1-28 of any month, then the 29th and 30th (not in
# February), then the 31st. 29 February exists in leap years only (divisible
# by 4, and not by 100 unless by 400): `_MONTH_DAY` looks back at the year
# once it has read that day, as Python's re can (RE2 cannot: lottery/bulkmatch.py).
MONTH_DAYS = (
    "(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])",
    "(?:0[13-9]|1[0-2])-(?:29|30)",
    "(?:0[13578]|1[02])-31",
)
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
_MONTH_DAY = f"(?:{'|'.join(MONTH_DAYS)}|02-29(?<={_LEAP_YEAR}-02-29))"
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _two_digits_upto(n: int) -> str:
    """A regex for the two-digit numbers 01 to ``n`` (1 ≤ n ≤ 31)."""
    if n <= 9:
        return f"0[1-{n}]"
    tens, units = divmod(n, 10)
    middle = [f"[1-{tens - 1}][0-9]"] if tens >= 2 else []
    return "|".join(["0[1-9]", *middle, f"{tens}[0-{units}]"])


def years_before(year: str) -> list[str]:
    """Regex branches for the years 0001 up to the one before ``year`` (four digits).

    Digit by digit: a smaller digit where ``year`` has a larger one, after the
    same prefix. Year 0000 does not exist, so the branch of leading zeros
    leaves it out (its other digits are not all zeros).
    """
    branches = []
    for i, digit in enumerate(year):
        if digit == "0":
            continue
        prefix, rest, below = year[:i], 3 - i, int(digit) - 1
        free = f"[0-9]{{{rest}}}" if rest else ""
        if prefix.strip("0"):
            branches.append(f"{prefix}[0-{below}]{free}")
            continue
        if below >= 1:
            branches.append(f"{prefix}[1-{below}]{free}")
        # prefix + 0, then ``rest`` digits that are not all zeros
        not_all_zeros = [
            "0" * zeros + "[1-9]" + "[0-9]" * (rest - zeros - 1) for zeros in range(rest)
        ]
        if not_all_zeros:
            branches.append(f"{prefix}0(?:{'|'.join(not_all_zeros)})")
    return branches


def this_year_dates(today: str) -> str:
    """A regex for the dates of ``today``'s year up to ``today`` (ISO), today included."""
    year, month, day = today[:4], int(today[5:7]), int(today[8:])
    leap = int(year) % 4 == 0 and (int(year) % 100 != 0 or int(year) % 400 == 0)
    days = [_DAYS_IN_MONTH[m - 1] - (m == 2 and not leap) for m in range(1, month)]
    month_days = [f"{m:02d}-(?:{_two_digits_upto(n)})" for m, n in enumerate(days, 1)]
    month_days.append(f"{month:02d}-(?:{_two_digits_upto(day)})")
    return f"{year}-(?:{'|'.join(month_days)})"


def _birthdate_pattern(today: str) -> str:
    """The valid birthdates as of ``today`` (ISO): real days from 0001-01-01 to today.

    Written so that the common case is cheap for sre, which tries branches in
    order: a year before this one, then any month-day of it (the commonest
    first); only this year's dates take the branch that stops at today.
    """
    before = years_before(today[:4])
    branches = [f"(?:{'|'.join(before)})-{_MONTH_DAY}"] if before else []
    return f"(?:{'|'.join([*branches, this_year_dates(today)])})"


@functools.lru_cache(maxsize=4)
def field_patterns(today: str) -> tuple[str, ...]:
    """One regex fragment per field, in FIELDS order, for the day ``today`` (ISO).

    They accept exactly what `validate_fields` accepts (the tests check it).
    The quantifiers are possessive (``{1,100}+``): a field's characters can
    never be the separator after it, so giving none back changes no match and
    saves the regex engine its backtracking bookkeeping, about 3× faster.
    """
    name = f"[^{NAME_FORBIDDEN}]{{1,{MAX_NAME_LENGTH}}}+"
    return (name, name, "[0-9]{1,10}+", _birthdate_pattern(today), "[0-9]{1,4}+")


@dataclass(frozen=True, slots=True)
class Bet:
    """One customer's bet, as the central stores it.

    ``agency`` is never read from a bet's payload: the server takes it from the
    connection's handshake, so an agency can only file bets as itself.
    """

    agency: int
    first_name: str
    last_name: str
    document: str
    birthdate: str
    number: int

    @classmethod
    def from_fields(cls, agency: int, fields: Sequence[str]) -> Bet:
        """Build a bet from an agency-file row, validating every field.

        Raises:
            InvalidBet: naming the first field that breaks a rule.
        """
        validate_fields(fields)
        first, last, document, birthdate, number = fields
        return cls(agency, first, last, document, birthdate, int(number))

    def fields(self) -> tuple[str, str, str, str, str]:
        """The five agency-file columns of this bet, as text."""
        return (self.first_name, self.last_name, self.document, self.birthdate, str(self.number))


class Records(Sequence[Record]):
    """Many bets in record form: one text, split into fields only on demand.

    The server validates a batch's text in bulk and hands it to the store as
    it is, so a million bets never become a million Python tuples; whoever
    does want the fields (the export, a test) indexes or iterates as with a
    list of `Record` tuples.
    """

    __slots__ = ("_data", "_length", "_rows", "text")

    def __init__(self, text: str, count: int, data: bytes | None = None) -> None:
        self.text = text  # every record ended by RS
        self._length = count  # not `count`: that is Sequence.count(value)
        self._rows: list[Record] | None = None
        self._data = data  # ``text`` in UTF-8, when the caller has it already

    def utf8(self) -> bytes:
        """``text`` in UTF-8: the bytes the wire carried (no re-encoding when known)."""
        if self._data is None:
            self._data = self.text.encode()
        return self._data

    @classmethod
    def from_fields(cls, rows: Iterable[Sequence[str]]) -> Records:
        """Join rows of five fields (not validated) into record form."""
        joined = [FS.join(row) for row in rows]
        return cls("".join(r + RS for r in joined), len(joined))

    @classmethod
    def of(cls, rows: Sequence[Sequence[str]]) -> Records:
        """``rows`` in record form: themselves if they are `Records` already."""
        return rows if isinstance(rows, Records) else cls.from_fields(rows)

    def rows(self) -> list[Record]:
        if self._rows is None:
            self._rows = [tuple(r.split(FS)) for r in self.text.split(RS)[:-1]]  # type: ignore[misc]
        return self._rows

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Record:  # type: ignore[override]
        return self.rows()[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.rows())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Records):
            return self.text == other.text
        if isinstance(other, Sequence) and not isinstance(other, str):
            return self.rows() == [tuple(row) for row in other]
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Records({self.rows()!r})"


def _name_problem(value: str) -> str | None:
    if not value:
        return "is empty"
    if len(value) > MAX_NAME_LENGTH:
        return f"has {len(value)} characters, more than {MAX_NAME_LENGTH}"
    for ch in value:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return f"contains the control character U+{code:04X}"
        if 0xD800 <= code <= 0xDFFF:
            return "is not valid UTF-8"
        if ch in _FORMAT_CONTROLS:
            return f"contains the control character U+{code:04X}"
    return None


def _is_ascii_digits(value: str) -> bool:
    return value.isascii() and value.isdigit()


@functools.lru_cache(maxsize=65536)
def birthdate_problem(value: str, today: str) -> str | None:
    """Why ``value`` is not a valid birthdate on day ``today`` (ISO), or None.

    Cached: a lottery's bets share a few tens of thousands of distinct birthdates.
    """
    if len(value) != 10 or value[4] != "-" or value[7] != "-":
        return f"{value!r} is not an ISO date YYYY-MM-DD"
    if not all(_is_ascii_digits(p) for p in (value[:4], value[5:7], value[8:])):
        return f"{value!r} is not an ISO date YYYY-MM-DD"
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        return f"{value!r} is not a real date"
    if value > today:  # ISO dates compare correctly as text
        return f"{value} is in the future"
    return None


def validate_fields(fields: Sequence[str], today: str | None = None) -> None:
    """Check an agency-file row of five text fields.

    Args:
        fields: first_name, last_name, document, birthdate, number.
        today: ISO date that counts as today (default: the local date).

    Raises:
        InvalidBet: naming the first offending field and the reason.
    """
    if len(fields) != len(FIELDS):
        raise InvalidBet("row", f"has {len(fields)} fields, expected {len(FIELDS)}")
    first, last, document, birthdate, number = fields
    for name, value in (("first_name", first), ("last_name", last)):
        problem = _name_problem(value)
        if problem:
            raise InvalidBet(name, problem)
    if not (1 <= len(document) <= 10 and _is_ascii_digits(document)):
        raise InvalidBet("document", f"{document!r} is not 1 to 10 digits")
    problem = birthdate_problem(birthdate, today or datetime.date.today().isoformat())
    if problem:
        raise InvalidBet("birthdate", problem)
    if not (1 <= len(number) <= 4 and _is_ascii_digits(number)):
        raise InvalidBet("number", f"{number!r} is not an integer from 0 to 9999")


# -- many bets at once: the record form, checked in bulk -----------------------


@functools.lru_cache(maxsize=4)
def _records_re(today: str) -> re.Pattern[str]:
    """One or more valid records, as of ``today`` (the birthdate rule needs the day)."""
    record = FS.join(f"(?:{p})" for p in field_patterns(today)) + RS
    return re.compile(f"(?:{record})++")


@functools.lru_cache(maxsize=8)
def csv_rows_pattern(today: str, crlf: bool) -> re.Pattern[bytes]:
    """Plain agency-file lines (UTF-8, no quotes) of valid rows, for the agency's reader.

    It matches one or more lines ``first,last,document,birthdate,number``
    ended by CRLF (``crlf``) or LF, the last three fields checked exactly as in
    `field_patterns`. A name is 1 to 100 bytes, none a comma or a control
    (C0 or DEL): 100 bytes are at most 100 characters (a longer name takes
    the exact path), and what bytes alone do not show, that the name is
    UTF-8 free of C1 and format controls, `has_forbidden_utf8` and a decode
    check for the whole block at once (lottery/csvfiles.py).
    """
    _, _, document, birthdate, number = field_patterns(today)
    name = f"[^,\\x00-\\x1f\\x7f]{{1,{MAX_NAME_LENGTH}}}+"
    row = ",".join((name, name, document, birthdate, number)) + ("\\r\\n" if crlf else "\\n")
    return re.compile(f"(?:{row})++".encode("ascii"))


# The non-ASCII characters no name may hold (C1 controls and the format
# controls), as UTF-8; surrogates never decode, so they need no entry here.
_FORBIDDEN_NON_ASCII = [chr(c) for c in range(0x80, 0xA0)] + sorted(_FORMAT_CONTROLS)
_FORBIDDEN_UTF8 = re.compile(b"|".join(re.escape(ch.encode()) for ch in _FORBIDDEN_NON_ASCII))
# Their UTF-8 lead bytes: a block holding none of them needs no search at all.
_FORBIDDEN_LEADS = sorted({ch.encode()[:1] for ch in _FORBIDDEN_NON_ASCII})


def has_forbidden_utf8(data: bytes) -> bool:
    """Whether UTF-8 ``data`` holds a C1 or format control (which no name may hold)."""
    return any(lead in data for lead in _FORBIDDEN_LEADS) and bool(_FORBIDDEN_UTF8.search(data))


def encode_record(fields: Sequence[str], today: str | None = None) -> bytes:
    """Validate a bet's five fields and return its wire record.

    Raises:
        InvalidBet: naming the first offending field and the reason.
    """
    today = today or datetime.date.today().isoformat()
    if len(fields) == 5:
        text = FS.join(fields) + RS
        if _records_re(today).fullmatch(text):
            return text.encode()
    validate_fields(fields, today)
    # validate_fields accepts only what the pattern accepts (tested), so a row
    # reaching this line would be a bug in one of them.
    raise InvalidBet("row", "does not match the record pattern")


def _explain_records(text: str, today: str) -> InvalidBatch | ProtocolError:
    """Why ``text`` is not a valid sequence of records (the slow, exact path)."""
    if not text.endswith(RS):
        return ProtocolError("records must end with the record separator 0x1E")
    for index, raw in enumerate(text[:-1].split(RS)):
        try:
            validate_fields(raw.split(FS), today)
        except InvalidBet as exc:
            return InvalidBatch(index, exc)
    return ProtocolError("malformed records")


def validate_records(text: str, today: str) -> int:
    """Check a run of wire records (each ended by 0x1E) and return how many.

    The whole run is checked by one regular expression, in C; only a failure
    takes the slow path that finds the first bad bet and says why.

    Raises:
        InvalidBatch: naming the first invalid bet's index, field and reason.
        ProtocolError: the text is not records at all (no final 0x1E).
    """
    if not _records_re(today).fullmatch(text):
        raise _explain_records(text, today)
    return text.count(RS)
