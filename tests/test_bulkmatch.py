"""The bulk checks run by RE2 accept exactly what Python's re and validate_fields accept."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lottery import bulkmatch
from lottery.errors import InvalidBet
from lottery.models import (
    NAME_FORBIDDEN,
    birthdate_problem,
    csv_rows_pattern,
    field_patterns,
    validate_fields,
)

from .conftest import IN_CI
from .helpers import EDGE_TODAYS, edge_dates
from .test_models import TODAY, rows

# Outside CI, a checkout without the `fast` extra skips these; under CI=true
# (whose install has it) they fail instead, so a missing RE2 cannot pass unseen.
pytestmark = pytest.mark.skipif(
    not IN_CI and bulkmatch.engine() != "re2", reason="google-re2 is not installed"
)


def _valid(fields: list[str]) -> bool:
    try:
        validate_fields(fields, TODAY)
    except InvalidBet:
        return False
    return True


@settings(max_examples=500, deadline=None)
@given(fields=rows(), copies=st.integers(1, 3))
def test_re2_takes_a_run_of_records_exactly_when_validate_fields_takes_each(
    fields: list[str], copies: int
) -> None:
    try:
        data = (("\x1f".join(fields) + "\x1e") * copies).encode()
    except UnicodeEncodeError:
        return  # a lone surrogate never reaches the wire
    matched = bulkmatch._records_re2(TODAY).fullmatch(data) is not None
    assert matched == _valid(fields)


@settings(max_examples=500, deadline=None)
@given(fields=rows(), crlf=st.booleans())
def test_re2_takes_csv_lines_exactly_when_re_does(fields: list[str], crlf: bool) -> None:
    line = ",".join(fields) + ("\r\n" if crlf else "\n")
    data = line.encode(errors="surrogatepass") * 2  # a lone surrogate: bytes that are no UTF-8
    expected = csv_rows_pattern(TODAY, crlf).fullmatch(data) is not None
    assert (bulkmatch._csv_re2(TODAY, crlf).fullmatch(data) is not None) == expected


@pytest.mark.parametrize("today", EDGE_TODAYS)
def test_re2_birthdates_are_exactly_the_real_past_days(today: str) -> None:
    import re2

    pattern = re2.compile(bulkmatch.birthdate_pattern(today))
    for date in edge_dates(today):
        expected = birthdate_problem(date, today) is None
        assert (pattern.fullmatch(date) is not None) == expected, date


def _code_points() -> Iterator[int]:
    yield from range(0x3000)  # every control and format control is below this
    yield from range(0x3000, 0x110000, 97)


def test_re2_name_class_forbids_exactly_the_characters_re_forbids() -> None:
    import re2

    ours = re.compile(f"[^{NAME_FORBIDDEN}]")
    theirs = re2.compile(f"[^{bulkmatch._re2_class(NAME_FORBIDDEN)}]")
    for point in _code_points():
        if 0xD800 <= point <= 0xDFFF:
            continue  # no UTF-8 text holds a surrogate
        char = chr(point)
        assert (theirs.fullmatch(char) is not None) == (ours.fullmatch(char) is not None), hex(
            point
        )
    # The name in field_patterns is this very class.
    assert field_patterns(TODAY)[0].startswith(f"[^{NAME_FORBIDDEN}]")


def test_without_re2_python_re_does_every_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulkmatch, "_re2", lambda: None)
    bulkmatch._records_re2.cache_clear()
    bulkmatch._csv_re2.cache_clear()
    try:
        assert bulkmatch.engine() == "re"
        good = "Ana\x1fPérez\x1f1\x1f2000-01-01\x1f7\x1e"
        assert bulkmatch.check_records(good * 2, (good * 2).encode(), TODAY) == 2
        assert bulkmatch.csv_lines_valid(b"Ana,P\xc3\xa9rez,1,2000-01-01,7\n", False, TODAY)
        assert not bulkmatch.csv_lines_valid(b"Ana,,1,2000-01-01,7\n", False, TODAY)
    finally:
        bulkmatch._records_re2.cache_clear()
        bulkmatch._csv_re2.cache_clear()
