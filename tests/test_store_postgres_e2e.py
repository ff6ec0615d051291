"""``lottery server --store postgresql://...`` as real processes: a whole round, the export,
the draw record's check, and a PostgreSQL that is not there."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
from pathlib import Path

import asyncpg
import pytest

import pg_cluster as cluster
from gen_dataset import generate_agency_file
from roundrunner import (
    input_bets,
    lottery_command,
    start_agency,
    start_server,
    stop_server,
    wait_agencies,
)

from .conftest import UNIT

pytestmark = [pytest.mark.timeout(180 * UNIT), pytest.mark.e2e]


def _lottery(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*lottery_command(), *args], capture_output=True, text=True, timeout=60 * UNIT
    )


def test_a_round_on_postgresql_end_to_end(tmp_path: Path, pg_dsn: str) -> None:
    """3 agency processes send to a server on --store: every agency gets its winners, the
    export from the store equals the input, and the draw record verifies against it."""
    files = []
    for agency, rows in enumerate([{0, 149}, {77}, set()], 1):
        path = tmp_path / f"agency-{agency}.csv"
        generate_agency_file(path, 150, rows, seed=agency)
        files.append(path)
    server = start_server(tmp_path / "unused", 3, extra_args=["--store", pg_dsn])
    try:
        agencies = [start_agency(i, server.port, f) for i, f in enumerate(files, 1)]
        wait_agencies(agencies, timeout=120 * UNIT)
    finally:
        status = stop_server(server)
    logs = server.log() + "".join(a.output for a in agencies)
    assert status == 0, server.log()[-3000:]
    assert "result: fail" not in logs, logs[-3000:]
    assert [a.returncode for a in agencies] == [0, 0, 0], logs[-3000:]
    assert [len(a.winners or []) for a in agencies] == [2, 1, 0]
    assert "store: postgresql://" in server.log()
    assert not (tmp_path / "unused" / "lottery.db").exists()

    out, record = tmp_path / "bets.csv", tmp_path / "record.json"
    done = _lottery("export", "--store", pg_dsn, "--csv", str(out), "--draw-record", str(record))
    assert done.returncode == 0, done.stderr
    with open(out, newline="", encoding="utf-8") as f:
        exported = [tuple(row) for row in csv.reader(f) if row]
    assert sorted(exported) == sorted(input_bets(files))
    assert json.loads(record.read_text())["number"] == 7574
    done = _lottery("verify", "--record", str(record), "--store", pg_dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout


def test_unreachable_postgresql_at_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A server whose --store does not answer says so in one line and exits 1."""
    done = subprocess.run(
        [*lottery_command(), "server", "--agencies", "2", "--port", "0",
         "--data-dir", str(tmp_path), "--store", "postgresql://postgres@127.0.0.1:9/lottery"],
        capture_output=True, text=True, timeout=60 * UNIT,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "lottery server:" in line]
    assert errors == [
        "lottery server: cannot reach PostgreSQL at postgresql://postgres@127.0.0.1:9/lottery: "
        + errors[0].split("/lottery: ", 1)[1]
    ]
    assert "Traceback" not in done.stderr


def test_a_bad_store_setting_is_a_usage_error() -> None:
    """--store that is not a PostgreSQL DSN is refused before anything starts."""
    done = _lottery("export", "--store", "mysql://x/y", "--csv", "-")
    assert done.returncode == 2
    assert "is not postgresql://USER@HOST:PORT/DB" in done.stderr


@pytest.mark.slow
def test_a_round_survives_a_postgresql_crash_restart(
    tmp_path: Path, pg_cluster: tuple[Path, str]
) -> None:
    """PostgreSQL crash-restarted (immediate mode) mid-round: the batches caught are refused
    and resent, the server reconnects, and the export equals the input bet for bet."""
    folder, dsn = pg_cluster
    files = []
    for agency in (1, 2, 3):
        path = tmp_path / f"agency-{agency}.csv"
        generate_agency_file(path, 20_000, {agency, 19_999}, seed=agency)
        files.append(path)
    server = start_server(tmp_path / "unused", 3, extra_args=["--store", dsn])
    try:
        agencies = [
            start_agency(i, server.port, f, extra_args=["--batch-max-amount", "20"])
            for i, f in enumerate(files, 1)
        ]
        asyncio.run(_until_some_bets_are_stored(dsn))
        cluster.restart(folder, immediate=True)
        wait_agencies(agencies, timeout=150 * UNIT)
    finally:
        status = stop_server(server)
    logs = server.log() + "".join(a.output for a in agencies)
    assert status == 0, server.log()[-3000:]
    assert [a.returncode for a in agencies] == [0, 0, 0], logs[-3000:]
    assert [len(a.winners or []) for a in agencies] == [2, 2, 2]
    assert server.log().count("action: sorteo | result: success") == 1
    out = tmp_path / "bets.csv"
    done = _lottery("export", "--store", dsn, "--csv", str(out))
    assert done.returncode == 0, done.stderr
    with open(out, newline="", encoding="utf-8") as f:
        assert sorted(tuple(row) for row in csv.reader(f) if row) == sorted(input_bets(files))


async def _until_some_bets_are_stored(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(int(3000 * UNIT)):  # the server is another process: nothing to await
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM agencies WHERE last_seq > 0)"):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the server stored nothing in a minute")
    finally:
        await conn.close()
