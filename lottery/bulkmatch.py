"""The two bulk checks on the hot paths, run by RE2 when it is installed.

- `check_records`: the server's check of a BATCH's records;
- `csv_lines_valid`: the agency's check of a block of plain CSV lines.

Each is one regular expression over the whole run, the same language as the
patterns `lottery.models` gives Python's ``re``, which stay the reference
(`validate_fields` and the tests pin both engines to it). RE2 (the
``google-re2`` package, the ``fast`` extra) runs it as a DFA: about twice as fast on these
patterns (0.06-0.07 µs a bet against 0.12-0.14), and it lets go of the GIL
while it matches, so the server's store thread runs meanwhile (the server
alone went from 1.7-1.8M to 2.3-2.4M bets/s; docs/PERFORMANCE.md). Where it
is not installed (another interpreter, a platform with no wheel), ``re``
does every check.

RE2 has no look-around, so the birthdate is written out without it: 29
February after the leap years before this one, listed (RE2 makes a trie of
them). A run RE2 refuses goes to ``re``, which says which bet and why: a
disagreement between the two could only ever cost time, never let a bad bet in.
"""

from __future__ import annotations

import functools
from typing import Any

from .models import (
    MAX_NAME_LENGTH,
    MONTH_DAYS,
    NAME_FORBIDDEN,
    RS,
    csv_rows_pattern,
    this_year_dates,
    validate_records,
    years_before,
)

__all__ = ["check_records", "csv_lines_valid", "engine"]

# The separators as RE2 escapes: the pattern stays printable.
_FS, _RS = "\\x1f", "\\x1e"


@functools.cache
def _re2() -> Any:
    """The ``re2`` module, or None when it is not installed."""
    try:
        import re2
    except ImportError:
        return None
    return re2


def engine() -> str:
    """Which engine runs the bulk checks here: ``"re2"`` or ``"re"``."""
    return "re" if _re2() is None else "re2"


def _re2_class(ranges: str) -> str:
    """An sre class body (characters and ``a-b`` ranges) in RE2's ``\\x{...}`` escapes.

    Surrogates are left out: no UTF-8 text holds them (it would not decode).
    """
    items: list[tuple[int, int]] = []
    i = 0
    while i < len(ranges):
        if i + 2 < len(ranges) and ranges[i + 1] == "-":
            items.append((ord(ranges[i]), ord(ranges[i + 2])))
            i += 3
        else:
            items.append((ord(ranges[i]), ord(ranges[i])))
            i += 1
    return "".join(
        f"\\x{{{lo:x}}}" if lo == hi else f"\\x{{{lo:x}}}-\\x{{{hi:x}}}"
        for lo, hi in items
        if not 0xD800 <= lo <= 0xDFFF
    )


def birthdate_pattern(today: str) -> str:
    """`lottery.models`' birthdates as of ``today`` (ISO), with no look-around, for RE2."""
    year = today[:4]
    leap_years = [f"{y:04d}" for y in range(4, int(year), 4) if y % 100 or y % 400 == 0]
    branches = []
    before = years_before(year)
    if before:
        branches.append(f"(?:{'|'.join(before)})-(?:{'|'.join(MONTH_DAYS)})")
    if leap_years:
        branches.append(f"(?:{'|'.join(leap_years)})-02-29")
    branches.append(this_year_dates(today))
    return f"(?:{'|'.join(branches)})"


@functools.lru_cache(maxsize=4)
def _records_re2(today: str) -> Any:
    """RE2 over UTF-8 bytes: one or more records, as `lottery.models.validate_records` takes."""
    re2 = _re2()
    if re2 is None:
        return None
    name = f"[^{_re2_class(NAME_FORBIDDEN)}]{{1,{MAX_NAME_LENGTH}}}"
    record = _FS.join((name, name, "[0-9]{1,10}", birthdate_pattern(today), "[0-9]{1,4}"))
    return re2.compile(f"(?:{record}{_RS})+".encode())


@functools.lru_cache(maxsize=8)
def _csv_re2(today: str, crlf: bool) -> Any:
    """RE2 over bytes (Latin-1: byte by byte): `lottery.models.csv_rows_pattern`'s lines."""
    re2 = _re2()
    if re2 is None:
        return None
    name = f"[^,\\x00-\\x1f\\x7f]{{1,{MAX_NAME_LENGTH}}}"
    row = ",".join((name, name, "[0-9]{1,10}", birthdate_pattern(today), "[0-9]{1,4}"))
    end = "\\r\\n" if crlf else "\\n"
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1
    return re2.compile(f"(?:{row}{end})+".encode(), options)


def check_records(text: str, data: bytes, today: str) -> int:
    """`lottery.models.validate_records` for ``text``, whose UTF-8 is ``data``.

    ``text`` must be ``data.decode()``: the decoding is what refuses bytes
    that are not UTF-8 (RE2 alone would take an encoded surrogate).
    Returns how many records; raises as `validate_records` does.
    """
    matcher = _records_re2(today)
    if matcher is None or matcher.fullmatch(data) is None:
        return validate_records(text, today)  # re decides, and says why
    return text.count(RS)


def csv_lines_valid(data: bytes, crlf: bool, today: str) -> bool:
    """Whether ``data`` is whole plain lines (CRLF or LF), each a valid row's bytes."""
    matcher = _csv_re2(today, crlf)
    if matcher is None:
        return csv_rows_pattern(today, crlf).fullmatch(data) is not None
    return matcher.fullmatch(data) is not None
