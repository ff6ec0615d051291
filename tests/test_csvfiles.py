"""Agency CSV files in (quoting, line ends, bad rows, chunking) and tp0's bets.csv out."""

from __future__ import annotations

import csv
import io
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lottery.csvfiles import AgencyFileReader, RejectedRow, read_bets_csv, write_bets_csv
from lottery.protocol import (
    Batch,
    BatchCutter,
    Hello,
    ServerProtocol,
    Welcome,
    encode,
    encode_batch_data,
)

pytestmark = pytest.mark.timeout(30)

TODAY = "2024-06-01"
DATASET = Path(__file__).parents[2] / "shared" / "data" / "tp0-dataset.zip"
DATASET_ROWS = {
    "agency-1.csv": 26936,
    "agency-2.csv": 25518,
    "agency-3.csv": 16014,
    "agency-4.csv": 9238,
    "agency-5.csv": 991,
}

Row = tuple[str, ...]


def write(tmp_path: Path, data: bytes, name: str = "agency-1.csv") -> Path:
    """Write raw bytes to a file in ``tmp_path`` and return its path."""
    path = tmp_path / name
    path.write_bytes(data)
    return path


def decode(record: bytes) -> Row:
    """The five fields of one wire record."""
    assert record.endswith(b"\x1e")
    return tuple(record[:-1].decode().split("\x1f"))


def records_of(data: bytes) -> list[bytes]:
    """The wire records of a block's data, each with its 0x1E."""
    return [r + b"\x1e" for r in data.split(b"\x1e")[:-1]]


def read_all(path: str | Path, block_size: int = 1 << 18) -> tuple[list[Row], AgencyFileReader]:
    """Every record of ``path`` read block by block, and the reader (for its rejected rows)."""
    reader = AgencyFileReader(path, block_size=block_size, today=TODAY)
    rows: list[Row] = []
    while (block := reader.read_block()) is not None:
        records = records_of(block.data)
        assert block.count == len(records) > 0
        rows.extend(decode(r) for r in records)
    return rows, reader


def lines(*rows: str, end: str = "\n") -> bytes:
    """CSV text made of ``rows``, each ended by ``end``, as UTF-8."""
    return "".join(row + end for row in rows).encode()


ANA = "Ana,Díaz,30904465,1999-03-17,2201"
BETO = "Beto,Ruiz,21689196,2000-05-10,7574"
CARLA = "Carla,Sosa,34407251,2001-08-29,1033"
ANA_ROW = ("Ana", "Díaz", "30904465", "1999-03-17", "2201")
BETO_ROW = ("Beto", "Ruiz", "21689196", "2000-05-10", "7574")
CARLA_ROW = ("Carla", "Sosa", "34407251", "2001-08-29", "1033")


# -- quoting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 40, 1 << 18])
def test_quoted_commas_and_doubled_quotes_are_one_field_each(
    tmp_path: Path, block_size: int
) -> None:
    """Quoted names with commas and "" escapes are read whole; no bet is dropped or repeated."""
    path = write(
        tmp_path,
        lines(
            ANA,
            '"Pérez, Juan",O\'Hara,11111111,1980-01-02,1',
            '"Ana ""La Tana""","Gómez, ""Jr.""",22222222,1970-12-31,2',
            '"Beto","Ruiz",21689196,"2000-05-10","7574"',
            CARLA,
        ),
    )
    rows, reader = read_all(path, block_size)
    assert rows == [
        ANA_ROW,
        ("Pérez, Juan", "O'Hara", "11111111", "1980-01-02", "1"),
        ('Ana "La Tana"', 'Gómez, "Jr."', "22222222", "1970-12-31", "2"),
        BETO_ROW,
        CARLA_ROW,
    ]
    assert reader.rejected == []
    assert reader.rows_read == 5


def test_a_bare_quote_inside_a_name_is_kept_as_is(tmp_path: Path) -> None:
    """A quote in the middle of an unquoted field is an ordinary character, as in csv."""
    rows, reader = read_all(write(tmp_path, lines('O"Brien,Ruiz,1,1990-01-01,1')))
    assert rows == [('O"Brien', "Ruiz", "1", "1990-01-01", "1")]
    assert reader.rejected == []


# -- line ends, BOM, blank lines ----------------------------------------------------------------


def test_lf_and_crlf_files_give_the_same_records(tmp_path: Path) -> None:
    """LF, CRLF, mixed line ends and a missing final newline all read the same bets."""
    text = [ANA, '"Pérez, Juan",Ruiz,1,1990-01-01,1', BETO, CARLA]
    variants = {
        "lf": lines(*text),
        "crlf": lines(*text, end="\r\n"),
        "mixed": (ANA + "\r\n" + text[1] + "\n" + BETO + "\r\n" + CARLA + "\n").encode(),
        "no-final-newline": lines(*text, end="\r\n")[:-2],
    }
    results = {
        name: read_all(write(tmp_path, data, f"{name}.csv")) for name, data in variants.items()
    }
    expected = results["lf"][0]
    assert len(expected) == 4
    for name, (rows, reader) in results.items():
        assert rows == expected, name
        assert reader.rejected == [], name


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_a_utf8_bom_is_ignored(tmp_path: Path, end: str) -> None:
    """A leading UTF-8 byte-order mark does not end up in the first name."""
    path = write(tmp_path, b"\xef\xbb\xbf" + lines(ANA, BETO, end=end))
    rows, reader = read_all(path)
    assert rows == [ANA_ROW, BETO_ROW]
    assert reader.rejected == []


def test_blank_lines_are_skipped_and_do_not_shift_line_numbers(tmp_path: Path) -> None:
    """Blank lines anywhere are skipped, and bad rows after them keep their real line number."""
    data = b"\r\n" + lines(ANA, end="\r\n") + b"\n\n" + b"x,y,bad,1990-01-01,1\r\n" + b"\r\n"
    data += lines(BETO) + b"\n\r\n"
    rows, reader = read_all(write(tmp_path, data))
    assert rows == [ANA_ROW, BETO_ROW]
    assert [r.line for r in reader.rejected] == [5]
    assert reader.rows_read == 3


# -- bad rows --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"Ana,Diaz,12a,1999-03-17,1", "document: '12a' is not 1 to 10 digits"),
        (b"Ana,Diaz,123,1999-02-30,1", "birthdate: '1999-02-30' is not a real date"),
        (b"Ana,Diaz,123,17/03/1999,1", "birthdate: '17/03/1999' is not an ISO date YYYY-MM-DD"),
        (b"Ana,Diaz,123,2030-01-01,1", "birthdate: 2030-01-01 is in the future"),
        (b"Ana,Diaz,123,1999-03-17,12345", "number: '12345' is not an integer from 0 to 9999"),
        (b"Ana,Diaz,123", "row: has 3 fields, expected 5"),
        (b"Ana,Diaz,123,1999-03-17,1,extra", "row: has 6 fields, expected 5"),
        (b",Diaz,123,1999-03-17,1", "first_name: is empty"),
        (b"Jos\xe9,Diaz,123,1999-03-17,1", "first_name: is not valid UTF-8"),
        (b"Ana,D\xc3\xadaz\xff,123,1999-03-17,1", "last_name: is not valid UTF-8"),
        (b"Ana,Diaz,12\xff,1999-03-17,1", "document: '12\\udcff' is not 1 to 10 digits"),
        (b'"Ana,Diaz,123,1999-03-17,1', "not valid CSV (unexpected end of data)"),
        (b'"Ana"x,Diaz,123,1999-03-17,1', "not valid CSV (',' expected after '\"')"),
        (b"Ana\tMaria,Diaz,123,1999-03-17,1", "first_name: contains the control character U+0009"),
    ],
)
@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_a_bad_row_is_reported_with_file_line_and_reason(
    tmp_path: Path, bad: bytes, reason: str, end: bytes
) -> None:
    """A bad row is rejected with its path, line and reason, and the rows around it still come."""
    path = write(tmp_path, ANA.encode() + end + bad + end + BETO.encode() + end + CARLA.encode())
    rows, reader = read_all(path)
    assert rows == [ANA_ROW, BETO_ROW, CARLA_ROW]
    assert reader.rejected == [RejectedRow(str(path), 2, reason)]
    assert str(reader.rejected[0]) == f"{path}:2: {reason}"
    str(reader.rejected[0]).encode("utf-8")  # printable in a log: no lone surrogates leak


def test_an_unterminated_quote_spoils_only_its_own_line(tmp_path: Path) -> None:
    """An opening quote never closed rejects its line; the lines after it are still read."""
    data = lines(ANA, '"Juan,Perez,11111111,1980-01-02,1', BETO, CARLA, '"Zoe,Ruiz')
    rows, reader = read_all(write(tmp_path, data), block_size=2)
    assert rows == [ANA_ROW, BETO_ROW, CARLA_ROW]
    assert [(r.line, r.reason) for r in reader.rejected] == [
        (2, "not valid CSV (unexpected end of data)"),
        (5, "not valid CSV (unexpected end of data)"),
    ]


def test_many_bad_rows_are_all_reported_in_order(tmp_path: Path) -> None:
    """Every bad row of a file is listed, in file order, and good ones fill the blocks."""
    text = []
    for i in range(1, 31):
        text.append(f"N{i},L{i},{i},1990-01-01,{i}" if i % 3 else f"N{i},L{i},x{i},1990-01-01,1")
    rows, reader = read_all(write(tmp_path, lines(*text)), block_size=64)
    assert [r[2] for r in rows] == [str(i) for i in range(1, 31) if i % 3]
    assert [r.line for r in reader.rejected] == list(range(3, 31, 3))
    assert reader.rows_read == 30


# -- blocks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 3, 100, 1 << 18])
@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 6, 7, 4095, 4096, 4097])
def test_blocks_lose_no_row(tmp_path: Path, block_size: int, count: int) -> None:
    """Whatever the block size, every row comes out once, in order, in whole records."""
    text = [f"Name{i},Last{i},{i},1990-01-01,{i % 10000}" for i in range(count)]
    reader = AgencyFileReader(write(tmp_path, lines(*text, end="\r\n")), block_size, TODAY)
    records = []
    while (block := reader.read_block()) is not None:
        assert block.count == len(records_of(block.data))
        records.extend(records_of(block.data))
    assert [decode(r)[2] for r in records] == [str(i) for i in range(count)]
    assert reader.rows_read == count
    assert reader.read_block() is None
    assert reader.read_block() is None


def test_a_last_line_without_newline_is_read(tmp_path: Path) -> None:
    """The file's last row counts even with no line end after it."""
    rows, reader = read_all(write(tmp_path, (ANA + "\r\n" + BETO).encode()))
    assert rows == [ANA_ROW, BETO_ROW]
    assert reader.rejected == []


@pytest.mark.parametrize("quoted", [False, True])
def test_a_bad_row_does_not_spoil_the_good_rows_of_its_block(tmp_path: Path, quoted: bool) -> None:
    """A block with one bad row keeps every good row of it, with or without quotes in it."""
    first = '"Ana, la ""Tana""",Díaz,1,1999-03-17,1' if quoted else ANA
    rows, reader = read_all(write(tmp_path, lines(first, "x,y,zz,1999-03-17,1", BETO)))
    assert len(rows) == 2 and rows[1] == BETO_ROW
    assert [r.line for r in reader.rejected] == [2]


def test_read_block_after_close_returns_nothing(tmp_path: Path) -> None:
    """Closing the reader early ends it: read_block returns None and close may be repeated."""
    reader = AgencyFileReader(write(tmp_path, lines(ANA, BETO, CARLA)), 1 << 18, TODAY)
    reader.close()
    assert reader.read_block() is None
    reader.close()


def test_an_empty_file_has_no_rows(tmp_path: Path) -> None:
    """An empty file, or one of only a BOM and blank lines, yields and rejects nothing."""
    for data in (b"", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n\r\n"):
        rows, reader = read_all(write(tmp_path, data))
        assert rows == []
        assert reader.rejected == []


def test_reader_takes_str_paths_and_reports_them_as_given(tmp_path: Path) -> None:
    """A str path works too, and RejectedRow.path is that same text."""
    path = str(write(tmp_path, lines("a,b,c")))
    rows, reader = read_all(path)
    assert rows == []
    assert reader.rejected == [RejectedRow(path, 1, "row: has 3 fields, expected 5")]


def test_reader_today_decides_what_is_in_the_future(tmp_path: Path) -> None:
    """The reader's ``today`` sets the future-birthdate cut-off."""
    path = write(tmp_path, lines("Ana,Diaz,1,2024-06-02,1"))
    assert read_all(path)[0] == []
    with AgencyFileReader(path, today="2024-06-02") as reader:
        block = reader.read_block()
    assert block is not None
    assert [decode(r) for r in records_of(block.data)] == [("Ana", "Diaz", "1", "2024-06-02", "1")]


# -- bets.csv ----------------------------------------------------------------------------------

STORED = [
    (1, "Santiago Lionel", "Lorca", "30904465", "1999-03-17", 2201),
    (2, "Pérez, Juan", 'Ana "La Tana"', "1", "2000-01-01", 0),
    (3, " Espacio ", "Ñandú;x", "0001", "1900-02-28", 7574),
]


def test_write_bets_csv_matches_tp0_store_bets_byte_for_byte(tmp_path: Path) -> None:
    """bets.csv is what csv.writer's default dialect writes: agency first, minimal quoting, CRLF."""
    path = tmp_path / "bets.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        assert write_bets_csv(iter(STORED), out) == 3
    expected = io.StringIO(newline="")
    writer = csv.writer(expected, quoting=csv.QUOTE_MINIMAL)  # tp0's store_bets
    for bet in STORED:
        writer.writerow(bet)
    assert path.read_bytes() == expected.getvalue().encode()
    assert (
        path.read_bytes()
        == (
            "1,Santiago Lionel,Lorca,30904465,1999-03-17,2201\r\n"
            '2,"Pérez, Juan","Ana ""La Tana""",1,2000-01-01,0\r\n'
            "3, Espacio ,Ñandú;x,0001,1900-02-28,7574\r\n"
        ).encode()
    )


def test_read_bets_csv_reads_back_what_was_written(tmp_path: Path) -> None:
    """read_bets_csv returns each written bet as six text fields."""
    path = tmp_path / "bets.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        write_bets_csv(STORED, out)
    assert list(read_bets_csv(path)) == [[str(v) for v in bet] for bet in STORED]


def test_no_bets_write_an_empty_file(tmp_path: Path) -> None:
    """Writing no bets gives an empty bets.csv (tp0 writes no header) and reads back empty."""
    path = tmp_path / "bets.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        assert write_bets_csv([], out) == 0
    assert path.read_bytes() == b""
    assert list(read_bets_csv(path)) == []


_names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Zl", "Zp")),
    min_size=1,
    max_size=30,
)
_bets = st.tuples(
    st.integers(1, 2**31),
    _names,
    _names,
    st.text("0123456789", min_size=1, max_size=10),
    st.dates().map(lambda d: d.isoformat()),
    st.integers(0, 9999),
)


@settings(max_examples=100, deadline=None)
@given(bets=st.lists(_bets, max_size=20))
def test_any_bets_round_trip_through_bets_csv(bets: list[tuple[object, ...]]) -> None:
    """Any valid bets written by write_bets_csv are read back unchanged by read_bets_csv."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bets.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            write_bets_csv(bets, out)
        assert list(read_bets_csv(path)) == [[str(v) for v in bet] for bet in bets]


# -- the real tp0 dataset ------------------------------------------------------------------------


def test_every_row_of_the_tp0_dataset_is_read_and_sent(tmp_path: Path) -> None:
    """All 78,697 rows of the five real agency files encode and decode as BATCH frames."""
    if not DATASET.exists():
        pytest.skip(f"{DATASET} is not present")
    with zipfile.ZipFile(DATASET) as archive:
        archive.extractall(tmp_path, members=list(DATASET_ROWS))
    total = 0
    for name, expected in DATASET_ROWS.items():
        path = tmp_path / name
        assert b"\r\n" in path.read_bytes()[:200]
        reader = AgencyFileReader(path, today=TODAY)
        server = ServerProtocol()
        server.receive_data(encode(Hello(1)))
        assert server.next_event(TODAY) == Hello(1)
        server.send(Welcome(0, 0))
        cutter = BatchCutter(200)
        batches = []
        while (block := reader.read_block()) is not None:
            batches += cutter.feed(block.data)
        last = cutter.flush()
        batches += [last] if last else []
        decoded = 0
        for seq, (data, count) in enumerate(batches, 1):
            server.receive_data(encode_batch_data(seq, data, count))
            message = server.next_event(TODAY)
            assert isinstance(message, Batch)
            assert len(message.records) == count
            decoded += count
        assert reader.rejected == [], reader.rejected[:3]
        assert reader.rows_read == expected == decoded, name
        total += decoded
    assert total == 78_697


# -- the bulk path agrees with the row-by-row path -------------------------------------------

# Pieces that sit on the edges of the rules: controls, separators, C1 and format
# controls, bad UTF-8, long names, quotes, leap days, future dates, and plain text.
_edgy_text = st.one_of(
    st.sampled_from(
        [
            "Ana", "Díaz", "O'Hara", "x" * 100, "é" * 60, "é" * 101, "\x00", "\x7f", "\t",
            "\r", "\x1e", "\x1f", "\x85", "\u202e", "\u2028", "\u061c", "\ufeff", "’", ",",
            '"', '""', "30904465", "12345678901", "", " ", "2024-02-29", "2023-02-29",
            "2024-06-01", "2024-06-02", "0000-01-01", "1999-13-01", "7574", "99999",
        ]
    ),
    st.text(max_size=8),
)  # fmt: skip
_edgy_line = st.lists(_edgy_text, min_size=3, max_size=7).map(",".join)
_GOOD_LINES = [ANA, BETO, CARLA, 'Ana,"Pérez, Jr.",1,2000-01-01,1', "é" * 100 + ",x,1,2000-01-01,1"]
_good_line = st.sampled_from(_GOOD_LINES)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.one_of(_good_line, _edgy_line), min_size=1, max_size=12),
    end=st.sampled_from(["\n", "\r\n"]),
    raw_bytes=st.sampled_from([b"", b"\xff", b"\xed\xa0\x80", b"\xc3"]),
)
def test_the_bulk_path_accepts_exactly_what_the_row_by_row_path_accepts(
    rows: list[str], end: str, raw_bytes: bytes
) -> None:
    """A block is read in bulk only when every row is one the row-by-row path accepts, alike."""
    data = "".join(row + end for row in rows).encode()
    if raw_bytes:  # a byte sequence that is not UTF-8, inside the first row
        data = data[:2] + raw_bytes + data[2:]
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), data)
        reader = AgencyFileReader(path, today=TODAY)
        slow = reader._convert_line_by_line(data, 1)
        fast = reader._convert(data, 1, data.count(b"\n"))
        reader.close()
    if not raw_bytes and all(row in _GOOD_LINES[:4] for row in rows):
        assert fast is not None  # only long non-ASCII names and bad rows leave the bulk path
    if fast is not None:
        assert not reader.rejected
        assert fast.data == slow.data
        assert fast.count == slow.count == data.count(b"\n")
        assert list(fast.lines) == list(slow.lines)
