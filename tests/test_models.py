"""Bet validation: each field rule, and the regex fast paths agreeing with validate_fields."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import re
import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lottery.errors import InvalidBet, ProtocolError
from lottery.models import FIELDS, Bet, birthdate_problem, field_patterns, validate_fields
from lottery.protocol import (
    FrameType,
    Hello,
    RejectedBatch,
    ServerProtocol,
    SingleBet,
    Welcome,
    encode,
    encode_record,
)

from .helpers import EDGE_TODAYS, edge_dates

pytestmark = pytest.mark.timeout(30)

TODAY = "2024-06-01"
TOMORROW = "2024-06-02"
VALID = ("Santiago Lionel", "Lorca", "30904465", "1999-03-17", "2201")

#: The format controls refused in names besides C0/C1 (line separators, bidi controls).
FORMAT_CONTROLS = (
    "\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def row(**changes: str) -> list[str]:
    """The valid row VALID with some fields replaced, by name."""
    fields = dict(zip(FIELDS, VALID, strict=True))
    fields.update(changes)
    return [fields[name] for name in FIELDS]


def problem(fields: Sequence[str], today: str | None = TODAY) -> InvalidBet:
    """The InvalidBet that validate_fields raises for ``fields``."""
    with pytest.raises(InvalidBet) as info:
        validate_fields(fields, today)
    return info.value


def test_a_valid_row_passes_and_builds_a_bet() -> None:
    """A valid row validates, and Bet.from_fields keeps every field, number as an int."""
    validate_fields(VALID, TODAY)
    bet = Bet.from_fields(4, VALID)
    assert bet == Bet(4, "Santiago Lionel", "Lorca", "30904465", "1999-03-17", 2201)
    assert bet.fields() == VALID


def test_bets_are_immutable() -> None:
    """A Bet is a frozen value: its fields cannot be reassigned."""
    bet = Bet.from_fields(1, VALID)
    with pytest.raises(dataclasses.FrozenInstanceError):
        bet.number = 7  # type: ignore[misc]


def test_bet_fields_write_the_number_without_padding() -> None:
    """A number written with leading zeros becomes an int, and fields() gives it back plain."""
    bet = Bet.from_fields(1, row(number="0042"))
    assert bet.number == 42
    assert bet.fields()[4] == "42"


def test_from_fields_refuses_an_invalid_row() -> None:
    """Bet.from_fields validates, raising InvalidBet for a bad field."""
    with pytest.raises(InvalidBet, match=r"^document: "):
        Bet.from_fields(1, row(document="x"))


def test_invalid_bet_carries_field_and_reason() -> None:
    """InvalidBet exposes the field and reason, and its message is 'field: reason'."""
    exc = problem(row(number="99999"))
    assert exc.field == "number"
    assert exc.reason == "'99999' is not an integer from 0 to 9999"
    assert str(exc) == f"number: {exc.reason}"


@pytest.mark.parametrize("count", [0, 1, 4, 6])
def test_a_row_must_have_five_fields(count: int) -> None:
    """A row with other than five fields is refused as a whole row."""
    exc = problem((list(VALID) * 2)[:count])
    assert exc.field == "row"
    assert f"has {count} fields, expected 5" in exc.reason


def test_the_first_bad_field_is_the_one_named() -> None:
    """With several bad fields, the error names the first in column order."""
    assert problem(row(last_name="", number="x")).field == "last_name"
    assert problem(row(document="x", birthdate="x")).field == "document"


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["first_name", "last_name"])
@pytest.mark.parametrize(
    "name",
    ["A", "x" * 100, "Ñandú", "O'Hara, Jr.", 'Ana "La Tana"', " ", "\xa0", "李" * 100, "😀"],
)
def test_names_accept_any_printable_text_up_to_100_characters(field: str, name: str) -> None:
    """Names may hold spaces, commas, quotes and any non-control Unicode, up to 100 characters."""
    validate_fields(row(**{field: name}), TODAY)


@pytest.mark.parametrize("field", ["first_name", "last_name"])
def test_names_must_not_be_empty(field: str) -> None:
    """An empty name is refused, naming the field."""
    exc = problem(row(**{field: ""}))
    assert (exc.field, exc.reason) == (field, "is empty")


@pytest.mark.parametrize("field", ["first_name", "last_name"])
def test_names_longer_than_100_characters_are_refused(field: str) -> None:
    """A 101-character name is refused with its length; characters, not bytes, are counted."""
    exc = problem(row(**{field: "é" * 101}))
    assert (exc.field, exc.reason) == (field, "has 101 characters, more than 100")


@pytest.mark.parametrize("field", ["first_name", "last_name"])
@pytest.mark.parametrize("char", ["\x00", "\t", "\n", "\r", "\x1e", "\x1f", "\x7f", "\x80", "\x9f"])
def test_names_with_control_characters_are_refused(field: str, char: str) -> None:
    """C0, DEL and C1 control characters (the wire separators among them) are refused."""
    exc = problem(row(**{field: f"Ana{char}Maria"}))
    assert exc.field == field
    assert exc.reason == f"contains the control character U+{ord(char):04X}"


@pytest.mark.parametrize("field", ["first_name", "last_name"])
@pytest.mark.parametrize("char", list(FORMAT_CONTROLS))
def test_names_with_line_separators_or_bidi_controls_are_refused(field: str, char: str) -> None:
    """U+2028/U+2029 and the bidi controls (U+202E...) are refused as control characters."""
    exc = problem(row(**{field: f"Ana{char}Maria"}))
    assert exc.field == field
    assert exc.reason == f"contains the control character U+{ord(char):04X}"
    assert not re.fullmatch(field_patterns(TODAY)[0], f"Ana{char}Maria")


@pytest.mark.parametrize("field", ["first_name", "last_name"])
@pytest.mark.parametrize("char", ["\u200d", "\u202f", "\u2065", "\u206a", "\ufeff"])
def test_names_keep_their_neighbouring_format_characters(field: str, char: str) -> None:
    """The characters next to the refused ones (ZWJ in emoji, narrow no-break space) stay valid."""
    validate_fields(row(**{field: f"Ana{char}Maria"}), TODAY)
    assert re.fullmatch(field_patterns(TODAY)[0], f"Ana{char}Maria")


@pytest.mark.parametrize("field", ["first_name", "last_name"])
@pytest.mark.parametrize("char", ["\ud800", "\udcff", "\udfff"])
def test_names_with_surrogates_are_refused_as_bad_utf8(field: str, char: str) -> None:
    """A lone surrogate (how undecodable file bytes arrive) is refused as not UTF-8."""
    exc = problem(row(**{field: f"Jos{char}"}))
    assert (exc.field, exc.reason) == (field, "is not valid UTF-8")


# -- document ----------------------------------------------------------------------------------


@pytest.mark.parametrize("document", ["0", "7", "30904465", "0000000000", "9999999999"])
def test_documents_of_1_to_10_digits_are_accepted(document: str) -> None:
    """A document of one to ten ASCII digits is valid, leading zeros included."""
    validate_fields(row(document=document), TODAY)


@pytest.mark.parametrize(
    "document", ["", "12345678901", "12a", " 123", "123 ", "-1", "+1", "1.0", "١٢٣", "１２３", "²"]
)
def test_other_documents_are_refused(document: str) -> None:
    """Empty, too long, signed, spaced or non-ASCII-digit documents are refused."""
    exc = problem(row(document=document))
    assert exc.field == "document"
    assert exc.reason == f"{document!r} is not 1 to 10 digits"


# -- birthdate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("birthdate", ["1999-03-17", "2000-02-29", "0001-01-01", TODAY])
def test_real_past_iso_dates_are_accepted(birthdate: str) -> None:
    """Real ISO dates up to and including today are valid birthdates."""
    validate_fields(row(birthdate=birthdate), TODAY)


@pytest.mark.parametrize(
    "birthdate",
    [
        "",
        "1999-3-17",
        "17/03/1999",
        "19990317",
        "1999/03/17",
        "1999-03-17T00:00",
        " 1999-03-17",
        "１９９９-03-17",
        "1999-03-1x",
        "+999-03-17",
        "1999-W11-3",
    ],
)
def test_birthdates_not_in_iso_form_are_refused(birthdate: str) -> None:
    """A birthdate that is not exactly YYYY-MM-DD in ASCII digits is refused."""
    exc = problem(row(birthdate=birthdate))
    assert exc.field == "birthdate"
    assert exc.reason == f"{birthdate!r} is not an ISO date YYYY-MM-DD"


@pytest.mark.parametrize(
    "birthdate",
    ["1999-02-29", "2000-02-30", "1999-13-01", "1999-00-10", "1999-04-31", "0000-01-01"],
)
def test_impossible_dates_are_refused(birthdate: str) -> None:
    """A well-formed date that is not on the calendar is refused as not real."""
    exc = problem(row(birthdate=birthdate))
    assert (exc.field, exc.reason) == ("birthdate", f"{birthdate!r} is not a real date")


def test_birthdates_in_the_future_are_refused() -> None:
    """A birthdate after ``today`` is refused; the same date is fine a day later."""
    exc = problem(row(birthdate=TOMORROW), today=TODAY)
    assert (exc.field, exc.reason) == ("birthdate", f"{TOMORROW} is in the future")
    validate_fields(row(birthdate=TOMORROW), TOMORROW)


def test_today_defaults_to_the_local_date() -> None:
    """Without ``today`` the local date is used: yesterday passes, next year does not."""
    now = datetime.date.today()
    validate_fields(row(birthdate=(now - datetime.timedelta(days=1)).isoformat()))
    future = now.replace(year=now.year + 1, day=1).isoformat()
    assert problem(row(birthdate=future), today=None).field == "birthdate"


def test_birthdate_problem_answers_none_for_a_good_date() -> None:
    """birthdate_problem returns None for a valid date and a reason otherwise."""
    assert birthdate_problem("1999-03-17", TODAY) is None
    assert birthdate_problem("1999-02-29", TODAY) == "'1999-02-29' is not a real date"


# -- number ------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["0", "7", "0000", "7574", "9999"])
def test_numbers_from_0_to_9999_are_accepted(number: str) -> None:
    """A number of one to four ASCII digits is valid."""
    validate_fields(row(number=number), TODAY)


@pytest.mark.parametrize("number", ["", "10000", "00000", "-1", "1.0", " 1", "1e3", "１", "٣"])
def test_other_numbers_are_refused(number: str) -> None:
    """Numbers outside 0–9999, or not plain ASCII digits, are refused."""
    exc = problem(row(number=number))
    assert exc.field == "number"
    assert exc.reason == f"{number!r} is not an integer from 0 to 9999"


# -- the regex paths agree with validate_fields --------------------------------------------------

TRICKY = [
    *"\x00\t\n\r\x1e\x1f\x7f\x80\x85\x9f\xa0",
    *"\ud800\udbff\udc00\udcff\udfff",
    *",\"' -+./:T",
    *"éÑü李\u2028\ufeff\u200b",
    *"\u061c\u200d\u200e\u200f\u2029\u202a\u202e\u202f\u2065\u2066\u2069\u206a",
    *"٣１²",
    "😀",
    *"0123456789",
]
BOUNDARY_NAMES = [
    *("", "x" * 100, "x" * 101, "é" * 101, "😀" * 100, "😀" * 101),
    *("Jos\udce9", "\ud800", "\udfff", "Ana\x7f", "Ana\x80", "Ana\x85", "Ana\x9f", "\xa0"),
    *("A\x1fB", "A\x1eB", "\t", "\x00", "\x1f", "\x20", "\u2028", "\ufeff", ",", '"'),
]
BOUNDARY_VALUES = {
    "first_name": BOUNDARY_NAMES,
    "last_name": BOUNDARY_NAMES,
    "document": ["", "0", "0" * 10, "1" * 11, "０", "١٢٣", "²", " 1", "1 ", "-1", "1.0", "1\n"],
    "birthdate": [
        *("1999-03-17", "2024-02-29", "2023-02-29", "1999-04-31", "0000-01-01", "0001-01-01"),
        *(TODAY, TOMORROW, "9999-12-31", "1999-3-17", "1999-03-7", "19990317", "1999-03-17 "),
        *("1999-03-1\x00", "1999/03/17", "１９９９-03-17", "1999-03-1٣", "+999-03-17", ""),
    ],
    "number": ["", "0", "0000", "9999", "00000", "10000", "-1", "+1", "１", "٣", "1e3", "1\n"],
}
tricky_chars = st.one_of(
    st.sampled_from(TRICKY),
    st.characters(exclude_categories=()),  # surrogates included
)
valid_name = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc",), exclude_characters=FORMAT_CONTROLS),
    min_size=1,
    max_size=100,
)
near_name = st.one_of(
    st.sampled_from(BOUNDARY_NAMES),
    st.text(tricky_chars, max_size=8),
    st.integers(98, 102).map(lambda n: "x" * n),
    st.tuples(st.integers(0, 101), tricky_chars).map(lambda t: "y" * t[0] + t[1]),
    st.tuples(valid_name, tricky_chars, st.integers(0, 100)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
    ),
)
digits = st.sampled_from("0123456789")
digit_like = st.one_of(digits, tricky_chars)
valid_document = st.text(digits, min_size=1, max_size=10)
near_document = st.one_of(
    st.text(digits, max_size=12),
    st.text(digit_like, max_size=12),
    st.sampled_from(["", "12345678901", "０", "١٢٣", "²", " 1", "1 ", "-1", "1.0"]),
)
valid_birthdate = st.dates(max_value=datetime.date.fromisoformat(TODAY)).map(
    datetime.date.isoformat
)
near_birthdate = st.one_of(
    st.dates().map(datetime.date.isoformat),  # the future included
    st.tuples(st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32)).map(
        lambda t: f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}"
    ),
    st.tuples(valid_birthdate, st.integers(0, 9), tricky_chars).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]
    ),
    st.text(digit_like | st.just("-"), max_size=12),
    st.sampled_from(["2023-02-29", "2024-02-29", TODAY, TOMORROW, "1999-3-17", "19990317"]),
)
valid_number = st.text(digits, min_size=1, max_size=4)
near_number = st.one_of(
    st.text(digits, max_size=6),
    st.text(digit_like, max_size=6),
    st.sampled_from(["", "10000", "99999", "00000", "-1", "+1", "１", "٣", "1e3"]),
)

VALID_FIELDS = (valid_name, valid_name, valid_document, valid_birthdate, valid_number)
NEAR_FIELDS = (near_name, near_name, near_document, near_birthdate, near_number)


@st.composite
def rows(draw: st.DrawFn) -> list[str]:
    """A five-field row: valid, or with one (most often) to three fields made near-valid."""
    fields = [draw(strategy) for strategy in VALID_FIELDS]
    changed = draw(st.sampled_from([0, 1, 1, 1, 1, 2, 3]))
    for index in draw(st.permutations(range(5)))[:changed]:
        fields[index] = draw(NEAR_FIELDS[index])
    return fields


def slow_verdict(fields: Sequence[str]) -> InvalidBet | None:
    """What validate_fields says about ``fields``: the error, or None if valid."""
    try:
        validate_fields(fields, TODAY)
    except InvalidBet as exc:
        return exc
    return None


@settings(max_examples=500, deadline=None)
@given(fields=rows())
def test_encode_record_accepts_exactly_what_validate_fields_accepts(fields: list[str]) -> None:
    """The regex fast path of encode_record succeeds exactly when validate_fields passes."""
    slow = slow_verdict(fields)
    try:
        encoded = encode_record(fields, TODAY)
    except InvalidBet as fast:
        assert slow is not None, f"fast path refused a valid row: {fast}"
        assert (fast.field, fast.reason) == (slow.field, slow.reason)
    else:
        assert slow is None, f"fast path accepted an invalid row: {slow}"
        assert encoded == ("\x1f".join(fields) + "\x1e").encode()


@settings(max_examples=400, deadline=None)
@given(fields=rows())
def test_the_server_decoder_accepts_exactly_what_validate_fields_accepts(
    fields: list[str],
) -> None:
    """A BET holding any row decodes iff the row is valid; otherwise it is refused, with why."""
    try:
        raw = ("\x1f".join(fields) + "\x1e").encode()
    except UnicodeEncodeError:
        return  # a lone surrogate cannot even be put on the wire
    proto = ServerProtocol()
    proto.receive_data(encode(Hello(1)))
    assert proto.next_event(TODAY) == Hello(1)
    proto.send(Welcome(0, 0))
    body = struct.pack("!IQ", 9, 0) + raw
    proto.receive_data(struct.pack("!IB", len(body), FrameType.BET) + body)
    slow = slow_verdict(fields)
    if slow is None:
        assert proto.next_event(TODAY) == SingleBet(9, tuple(fields))
    elif any("\x1f" in f or "\x1e" in f for f in fields):
        with contextlib.suppress(ProtocolError):  # separators may break the record itself
            assert isinstance(proto.next_event(TODAY), RejectedBatch)
    else:
        assert proto.next_event(TODAY) == RejectedBatch(9, 1, 0, str(slow))


def test_encode_record_agrees_with_validate_fields_on_every_boundary_value() -> None:
    """For each field's edge cases in an otherwise valid row, both paths give the same verdict."""
    for field, values in BOUNDARY_VALUES.items():
        for value in values:
            fields = row(**{field: value})
            slow = slow_verdict(fields)
            try:
                encode_record(fields, TODAY)
            except InvalidBet as fast:
                assert slow is not None, f"{field}={value!r}: fast path refused a valid row"
                assert (fast.field, fast.reason) == (slow.field, slow.reason)
            else:
                assert slow is None, f"{field}={value!r}: fast path accepted: {slow}"


def test_there_is_one_pattern_per_field() -> None:
    """field_patterns lines up with FIELDS, the agency-file column order."""
    assert FIELDS == ("first_name", "last_name", "document", "birthdate", "number")
    assert len(field_patterns(TODAY)) == len(FIELDS)


@settings(max_examples=1000, deadline=None)
@given(
    year=st.integers(0, 9999),
    month=st.integers(0, 13),
    day=st.integers(0, 32),
    today=st.dates(min_value=datetime.date(1, 1, 1)).map(datetime.date.isoformat),
)
def test_birthdate_pattern_is_exactly_a_real_date_not_after_today(
    year: int, month: int, day: int, today: str
) -> None:
    """The birthdate regex accepts exactly the real dates up to today, leap days included."""
    value = f"{year:04d}-{month:02d}-{day:02d}"
    pattern = re.compile(field_patterns(today)[3])
    assert bool(pattern.fullmatch(value)) == (birthdate_problem(value, today) is None)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2000-02-29", True),  # divisible by 400
        ("1900-02-29", False),  # by 100, not by 400
        ("2024-02-29", True),
        ("2023-02-29", False),
        ("2024-04-31", False),
        ("0000-01-01", False),
        ("0001-01-01", True),
        ("2024-06-01", True),  # today
        ("2024-06-02", False),  # tomorrow
    ],
)
def test_birthdate_pattern_edges(value: str, ok: bool) -> None:
    """Leap years, short months, year 0000 and today's edge are decided like datetime does."""
    assert bool(re.fullmatch(field_patterns("2024-06-01")[3], value)) is ok


@pytest.mark.parametrize("today", EDGE_TODAYS)
def test_the_birthdate_pattern_accepts_exactly_what_birthdate_problem_accepts(today: str) -> None:
    pattern = re.compile(field_patterns(today)[3])
    for date in edge_dates(today):
        expected = birthdate_problem(date, today) is None
        assert bool(pattern.fullmatch(date)) == expected, date
