"""Whole rounds with real ``lottery`` processes on loopback, judged like tp0's tests.

tp0's black-box tests read the containers' logs; these read the processes'
log lines the same way (``action: X | result: Y``), plus exit statuses and the
``lottery export`` of what the server stored.
"""

from __future__ import annotations

import collections
import json
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from gen_dataset import generate_agency_file
from lottery.protocol import Hello, encode
from roundrunner import (
    AgencyProcess,
    ServerProcess,
    export_bets,
    input_bets,
    lottery_command,
    parse_log_line,
    start_agency,
    start_server,
    stop_server,
    wait_agencies,
)

from .conftest import UNIT

pytestmark = [pytest.mark.timeout(180 * UNIT), pytest.mark.e2e]

SHARED_ZIP = Path(__file__).parents[2] / "shared" / "data" / "tp0-dataset.zip"


def _run_round(
    tmp_path: Path,
    files: list[Path],
    *,
    server_args: tuple[str, ...] = (),
    agency_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> tuple[ServerProcess, list[AgencyProcess], int]:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, len(files), extra_args=server_args, env=env)
    try:
        agencies = [
            start_agency(i, server.port, f, extra_args=agency_args, env=env)
            for i, f in enumerate(files, 1)
        ]
        wait_agencies(agencies, timeout=150 * UNIT)
    finally:
        status = stop_server(server)
    return server, agencies, status


def _export(tmp_path: Path, env: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    out = tmp_path / "bets.csv"
    rows = export_bets(tmp_path / "data", out, env=env, timeout=60 * UNIT)
    assert out.read_bytes().count(b"\r\n") == out.read_bytes().count(b"\n")  # tp0's CRLF
    return rows


def _assert_healthy(server: ServerProcess, agencies: list[AgencyProcess], status: int) -> None:
    logs = server.log() + "".join(a.output for a in agencies)
    assert "result: fail" not in logs, logs[-3000:]
    for agency in agencies:
        assert agency.returncode == 0, agency.output[-3000:]
    assert status == 0, server.log()[-3000:]
    assert server.log().count("action: sorteo | result: success") == 1


def _winner_counts(agencies: list[AgencyProcess]) -> list[int | None]:
    return [None if a.winners is None else len(a.winners) for a in agencies]


def _make_files(tmp_path: Path, bets: int, winner_rows: list[set[int]]) -> list[Path]:
    files = []
    for agency, rows in enumerate(winner_rows, 1):
        path = tmp_path / f"agency-{agency}.csv"
        generate_agency_file(path, bets, rows, seed=agency)
        files.append(path)
    return files


def test_three_agencies_winners_at_chosen_rows(tmp_path: Path) -> None:
    """3 agencies × 100 bets with winners at rows [0, 99], [50], [] report 2, 1, 0."""
    files = _make_files(tmp_path, 100, [{0, 99}, {50}, set()])
    server, agencies, status = _run_round(tmp_path, files)
    _assert_healthy(server, agencies, status)
    assert _winner_counts(agencies) == [2, 1, 0]
    for agency in agencies:
        lines = [parse_log_line(line) for line in agency.output.splitlines()]
        answered = [
            f["cant_ganadores"]
            for f in lines
            if f.get("action") == "consulta_ganadores" and f.get("result") == "success"
        ]
        assert answered == [str(len(agency.winners or []))]
    assert sorted(_export(tmp_path)) == sorted(input_bets(files))


def test_five_agencies_one_to_five_winners(tmp_path: Path) -> None:
    """5 agencies × 60 bets with 1..5 winners each report 1..5, and the export matches."""
    files = _make_files(tmp_path, 60, [set(range(0, 60, 60 // n)) for n in range(1, 6)])
    server, agencies, status = _run_round(tmp_path, files)
    _assert_healthy(server, agencies, status)
    assert _winner_counts(agencies) == [1, 2, 3, 4, 5]
    assert sorted(_export(tmp_path)) == sorted(input_bets(files))


@pytest.mark.parametrize("bets", [200, 201])
def test_no_bet_lost_at_batch_and_window_edges(tmp_path: Path, bets: int) -> None:
    """Row counts that are (200 = 25 × 8) and are not multiples of batch and window lose nothing."""
    files = _make_files(tmp_path, bets, [{bets - 1}, set()])
    server, agencies, status = _run_round(
        tmp_path, files, agency_args=("--batch-max-amount", "25", "--max-in-flight", "8")
    )
    _assert_healthy(server, agencies, status)
    exported = _export(tmp_path)
    assert len(exported) == 2 * bets
    assert sorted(exported) == sorted(input_bets(files))
    assert server.log().count("cantidad: 25") == 2 * (bets // 25)


def test_birthdates_do_not_move_with_the_time_zone(tmp_path: Path) -> None:
    """Server and agency in Buenos Aires time store and export the birthdates as written."""
    env = {"TZ": "America/Argentina/Buenos_Aires"}
    path = tmp_path / "agency-1.csv"
    path.write_text(
        'Ana,Gómez,1,2000-01-01,1\r\nBeto,"Pérez, Jr.",2,1999-12-31,7574\r\n'
        "Ciro,Díaz,3,1980-06-30,2\r\n",
        encoding="utf-8",
    )
    server, agencies, status = _run_round(tmp_path, [path], env=env)
    _assert_healthy(server, agencies, status)
    assert sorted(_export(tmp_path, env)) == sorted(input_bets([path]))


def test_quoted_commas_and_bad_rows(tmp_path: Path) -> None:
    """A quoted comma is one field; a bad row is reported and skipped (allowed), and exit is 1."""
    path = tmp_path / "agency-1.csv"
    path.write_text(
        '"Pérez, Juan ""el"" Jr",O\'Hara,10,1980-01-01,7574\n'
        "Bad,Row,12x,1980-01-01,1\n"
        "Ana,Gómez,11,1990-02-30,1\n"
        "Last,Bet,12,1970-05-05,3\n",
        encoding="utf-8",
    )
    _, agencies, status = _run_round(tmp_path, [path], agency_args=("--allow-rejected",))
    (agency,) = agencies
    assert agency.returncode == 1
    assert "linea: 2" in agency.output and "linea: 3" in agency.output
    assert "action: apuestas_rechazadas | result: fail" in agency.output
    assert "cantidad: 2" in agency.output
    assert agency.winners == ["10"]
    assert status == 0
    assert _export(tmp_path) == [
        ("1", 'Pérez, Juan "el" Jr', "O'Hara", "10", "1980-01-01", "7574"),
        ("1", "Last", "Bet", "12", "1970-05-05", "3"),
    ]


def test_single_bet_from_environment(tmp_path: Path) -> None:
    """With no --bets, tp0 ej5's NOMBRE..NUMERO variables send one bet, logged on both sides."""
    env = {
        "NOMBRE": "Santiago Lionel",
        "APELLIDO": "Lorca",
        "DOCUMENTO": "30904465",
        "NACIMIENTO": "1999-03-17",
        "NUMERO": "7574",
    }
    server = start_server(tmp_path / "data", 1)
    try:
        agency = start_agency(1, server.port, None, env=env)
        wait_agencies([agency], timeout=60 * UNIT)
    finally:
        status = stop_server(server)
    assert agency.returncode == 0, agency.output
    # tp0's exact text: the event's fields right after the result.
    assert "action: apuesta_enviada | result: success | dni: 30904465 | numero: 7574" in (
        agency.output
    )
    assert "action: apuesta_almacenada | result: success | dni: 30904465 | numero: 7574" in (
        server.log()
    )
    assert agency.winners == ["30904465"]
    assert status == 0


def test_agency_refused_exits_nonzero(tmp_path: Path) -> None:
    """An agency the server refuses (id outside 1..N) says why and exits 1."""
    path = _make_files(tmp_path, 5, [set()])[0]
    server = start_server(tmp_path / "data", 1)
    try:
        agency = start_agency(7, server.port, path)
        wait_agencies([agency], timeout=60 * UNIT)
    finally:
        stop_server(server)
    assert agency.returncode == 1
    assert "agency 7 is not in 1..1" in agency.output


def test_bad_config_value_exits_2_with_one_line(tmp_path: Path) -> None:
    """A wrong value is one plain line on stderr and exit status 2."""
    result = subprocess.run(
        [*lottery_command(), "server", "--port", "abc", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--port" in result.stderr and "abc" in result.stderr


def test_sigterm_is_bounded_with_a_silent_connection(tmp_path: Path) -> None:
    """SIGTERM with a connected agency that never speaks again exits 0 within the grace period."""
    server = start_server(tmp_path / "data", 2, extra_args=("--timeout-graceful-shutdown", "2"))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5 * UNIT) as sock:
        sock.sendall(encode(Hello(1)))
        sock.recv(64)  # the WELCOME: the connection is fully open
        started = time.monotonic()
        status = stop_server(server, timeout=20 * UNIT)
        elapsed = time.monotonic() - started
    assert status == 0, server.log()
    assert elapsed < 2 + 3 * UNIT
    assert "resource: connection" in server.log()
    assert "resource: store" in server.log()
    assert "action: shutdown | result: success" in server.log()


@pytest.mark.skipif(
    not SHARED_ZIP.exists(), reason="the course's tp0 dataset is not beside the repo"
)
def test_real_tp0_dataset(tmp_path: Path) -> None:
    """The course's real files: winners 2, 3, 3, 2, 0 and the export gives back all 78,697 bets."""
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        archive.extractall(tmp_path / "in")
    files = [next((tmp_path / "in").rglob(f"agency-{i}.csv")) for i in range(1, 6)]
    server, agencies, status = _run_round(tmp_path, files)
    _assert_healthy(server, agencies, status)
    assert _winner_counts(agencies) == [2, 3, 3, 2, 0]
    exported = _export(tmp_path)
    assert len(exported) == 78_697
    assert collections.Counter(exported) == collections.Counter(input_bets(files))


def test_python_dash_m_lottery_runs() -> None:
    """``python -m lottery --version`` works like the console script."""
    result = subprocess.run(
        [sys.executable, "-m", "lottery", "--version"],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("lottery ")


def test_stats_file_and_shutdown_figures(tmp_path: Path) -> None:
    """--stats-file writes one ack latency per batch; the server logs its commit figures at exit."""
    files = _make_files(tmp_path, 50, [{0}])
    stats = tmp_path / "stats.json"
    server, agencies, status = _run_round(
        tmp_path, files, agency_args=("--batch-max-amount", "10", "--stats-file", str(stats))
    )
    _assert_healthy(server, agencies, status)
    figures = json.loads(stats.read_text())
    assert figures["acknowledged"] == 50
    assert len(figures["ack_latencies_ms"]) == figures["batches_sent"] == 5
    fields = [parse_log_line(line) for line in server.lines]
    commits = next(f for f in fields if f.get("action") == "commits")
    assert commits["batches"] == "5"
    latency = next(f for f in fields if f.get("action") == "ack_latency")
    assert latency["batches"] == "5"
    assert float(latency["p99_ms"]) >= float(latency["p50_ms"]) >= 0
