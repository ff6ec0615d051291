"""Resuming across runs, days and files, with real processes (issues 9 items 4-5, 10 items 2-3).

Each test runs ``lottery server`` and ``lottery agency`` more than once on
one data directory. ``LOTTERY_TODAY`` (lottery/clock.py) sets the date each
process sees, so a test can cross midnight without touching the clock. A
run that stops part-way is a run on the start of the file: that stores
exactly its first rows, as an interrupted run does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from roundrunner import (
    AgencyProcess,
    export_bets,
    log_events,
    start_agency,
    start_server,
    stop_server,
    wait_agencies,
)

from .conftest import UNIT
from .helpers import make_rows, write_agency_file

pytestmark = [pytest.mark.timeout(180 * UNIT), pytest.mark.e2e]

DAY = "2030-01-10"
NEXT_DAY = "2030-01-11"
Row = tuple[str, str, str, str, str]


def _run(
    tmp_path: Path,
    bets: Path,
    *,
    today: str = DAY,
    agency_today: str | None = None,
    args: tuple[str, ...] = (),
) -> tuple[AgencyProcess, str]:
    """One server life and one run of agency 1 on ``bets``: the agency and the server log."""
    server = start_server(tmp_path / "data", 1, env={"LOTTERY_TODAY": today})
    try:
        agency = start_agency(
            1, server.port, bets, extra_args=args,
            env={"LOTTERY_TODAY": agency_today or today},
        )  # fmt: skip
        wait_agencies([agency], timeout=60 * UNIT)
    finally:
        stop_server(server)
    return agency, server.log()


def _export(tmp_path: Path) -> list[tuple[str, ...]]:
    return export_bets(tmp_path / "data", tmp_path / "bets.csv", timeout=60 * UNIT)


def _as_stored(rows: list[Row]) -> list[tuple[str, ...]]:
    return [("1", *row[:4], str(int(row[4]))) for row in rows]


def _done(server_log: str) -> bool:
    return bool(log_events(server_log, "agencia_lista", result="success"))


def test_a_restart_across_midnight_stores_each_bet_once(tmp_path: Path) -> None:
    """Run 1 on one day, run 2 the next: the export is the file's valid rows, bet for bet."""
    rows = make_rows(100)
    for index in (19, 69):  # born "tomorrow" on the first day, "today" on the second
        rows[index] = ("Nacido", "Mañana", str(90 + index), NEXT_DAY, "7")
    full = write_agency_file(tmp_path / "agency-1.csv", rows)
    first_half = write_agency_file(tmp_path / "half.csv", rows[:50])
    first, _ = _run(tmp_path, first_half, today=DAY)
    assert first.returncode == 1  # a rejected row: stored, but not done
    second, log = _run(tmp_path, full, today=NEXT_DAY, args=("--allow-rejected",))
    assert second.returncode == 1, second.output  # still a rejected row: allowed, not ok
    assert "omitidas: 49" in second.output
    assert _done(log)
    valid = [row for i, row in enumerate(rows) if i not in (19, 69)]
    assert _export(tmp_path) == _as_stored(valid)


def test_an_agency_ahead_of_the_server_rejects_the_rows_the_server_would(tmp_path: Path) -> None:
    """Agency at UTC+14, server at UTC-12: the agency's-today row is named and left out."""
    rows = make_rows(40)
    rows[7] = ("Recién", "Nacida", "777", NEXT_DAY, "1")
    path = write_agency_file(tmp_path / "agency-1.csv", rows)
    agency, log = _run(tmp_path, path, today=DAY, agency_today=NEXT_DAY, args=("--allow-rejected",))
    rejected = log_events(agency.output, "apuesta_rechazada", result="fail")
    assert [(r["archivo"], r["linea"]) for r in rejected] == [(str(path), "8")]
    assert _done(log) and agency.winners == []
    assert _export(tmp_path) == _as_stored(rows[:7] + rows[8:])


def test_a_rerun_with_another_file_stops_with_one_line(tmp_path: Path) -> None:
    """A rerun on a file that does not start with the stored bets stores nothing more, exit 1."""
    rows = make_rows(30)
    rows.append(("Mal", "Fila", "12x", "1990-01-01", "1"))  # trailing bad row: no DONE
    first, _ = _run(tmp_path, write_agency_file(tmp_path / "a.csv", rows))
    assert first.returncode == 1
    before = _export(tmp_path)
    other = write_agency_file(tmp_path / "b.csv", make_rows(60, start=1000))
    second, log = _run(tmp_path, other)
    assert second.returncode == 1
    errors = log_events(second.output, "ronda", result="fail")
    assert len(errors) == 1
    assert errors[0]["error"].startswith(
        "agency 1: the input differs from the 30 bets already stored for agency 1: "
        "its first 30 rows hold other bets than the 30 stored;"
    )
    assert "start a new round" in errors[0]["error"]
    assert not _done(log)
    assert _export(tmp_path) == before


def test_rejected_rows_keep_done_back_until_a_fixed_rerun(tmp_path: Path) -> None:
    """Rows rejected: valid ones stored, no DONE, exit 1 with the fix; the fixed file completes."""
    rows = make_rows(60, winners=[5])
    bad = ("Mala", "Fila", "30000029", "1990-02-30", "1")  # no 30 February
    path = tmp_path / "agency-1.csv"
    write_agency_file(path, [*rows[:29], bad, *rows[30:]])
    first, log = _run(tmp_path, path)
    assert first.returncode == 1 and not _done(log)
    (error,) = log_events(first.output, "ronda", result="fail")
    assert f"1 row rejected (first: {path}:30:" in error["error"]
    assert "empty its line and add the corrected row at the end of the file" in error["error"]
    assert len(_export(tmp_path)) == 59
    # The operator's fix: line 30 emptied, the corrected row added at the end.
    text = path.read_bytes().decode().split("\r\n")
    text[29] = ""
    path.write_bytes("\r\n".join([*text[:-1], ",".join(rows[29]), ""]).encode())
    second, log = _run(tmp_path, path)
    assert second.returncode == 0, second.output
    assert "omitidas: 59" in second.output
    assert _done(log) and second.winners == [rows[5][2]]
    assert _export(tmp_path) == _as_stored(rows[:29] + rows[30:] + [rows[29]])


def test_allow_rejected_says_done_without_the_bad_rows(tmp_path: Path) -> None:
    """With --allow-rejected the agency says DONE and gets its winners; the bad row is left out."""
    rows = make_rows(10, winners=[2])
    path = write_agency_file(tmp_path / "a.csv", [*rows[:5], ("X", "Y", "1", "1990-13-01", "1")])
    agency, log = _run(tmp_path, path, args=("--allow-rejected",))
    assert _done(log) and agency.winners == [rows[2][2]]
    assert _export(tmp_path) == _as_stored(rows[:5])


def test_a_file_that_is_not_utf8_is_never_done(tmp_path: Path) -> None:
    """A Latin-1 file: its bad rows are named, the agency exits 1 and DONE is never sent."""
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        "José,Núñez,1,1990-01-01,1\r\nAna,Díaz,2,1990-01-01,2\r\nBeto,Ruiz,3,1990-01-01,3\r\n".encode(
            "latin-1"
        )
    )
    agency, log = _run(tmp_path, path, args=("--allow-rejected",))
    assert agency.returncode == 1
    assert not _done(log)
    (error,) = log_events(agency.output, "ronda", result="fail")
    assert "the file is not UTF-8" in error["error"]
    assert _export(tmp_path) == [("1", "Beto", "Ruiz", "3", "1990-01-01", "3")]
