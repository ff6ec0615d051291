"""Random draws with real ``lottery`` processes, checked by ``lottery verify`` and the checker."""

from __future__ import annotations

import collections
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gen_dataset import generate_agency_file
from roundrunner import (
    export_bets,
    input_bets,
    log_events,
    log_value,
    lottery_command,
    start_agency,
    start_server,
    stop_server,
    wait_agencies,
)

from .conftest import UNIT
from .helpers import make_rows, write_agency_file

pytestmark = [pytest.mark.timeout(180 * UNIT), pytest.mark.e2e]

SHARED_ZIP = Path(__file__).parents[2] / "shared" / "data" / "tp0-dataset.zip"
CHECKER = Path(__file__).parent / "draw_checker.py"


def _random_round(tmp_path: Path, files: list[Path]) -> str:
    """Run a random-draw round on ``files``; check every agency; returns the server's log."""
    server = start_server(tmp_path / "data", len(files), extra_args=("--draw", "random"))
    try:
        agencies = [start_agency(i, server.port, f) for i, f in enumerate(files, 1)]
        wait_agencies(agencies, timeout=150 * UNIT)
    finally:
        assert stop_server(server) == 0, server.log()[-3000:]
    log = server.log()
    assert log.count("action: sorteo | result: success") == 1, log[-3000:]
    assert "result: fail" not in log, log[-3000:]
    commitment = log_value(server.lines, "compromiso_sorteo", "compromiso")
    for agency in agencies:
        assert agency.returncode == 0, agency.output[-3000:]
        assert "action: recibo | result: success" in agency.output, agency.output[-2000:]
        assert log_value(agency.output.splitlines(), "compromiso_sorteo", "servidor") == commitment
    return log


def _export_and_verify(tmp_path: Path) -> str:
    """``lottery export`` both files, then ``lottery verify`` and the independent checker."""
    record, bets = tmp_path / "draw.json", tmp_path / "bets.csv"
    export_bets(tmp_path / "data", bets, timeout=60 * UNIT)
    subprocess.run(
        [*lottery_command(), "export", "--data-dir", str(tmp_path / "data"),
         "--draw-record", str(record)],
        check=True, capture_output=True, timeout=60 * UNIT,
    )  # fmt: skip
    verify = subprocess.run(
        [*lottery_command(), "verify", "--csv", str(bets), "--record", str(record)],
        capture_output=True, text=True, timeout=60 * UNIT,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    checker = subprocess.run(
        [sys.executable, str(CHECKER), str(record), str(bets)],
        capture_output=True, text=True, timeout=60 * UNIT,
    )  # fmt: skip
    assert checker.stdout.strip() == "PASS", checker.stdout + checker.stderr
    return verify.stdout


def test_a_random_round_of_real_processes_verifies(tmp_path: Path) -> None:
    """Three agency processes, a random draw: receipts match, verify and the checker pass."""
    files = []
    for agency in range(1, 4):
        path = tmp_path / f"agency-{agency}.csv"
        generate_agency_file(path, 3000, {5, 50}, seed=agency)
        files.append(path)
    _random_round(tmp_path, files)
    assert "PASS" in _export_and_verify(tmp_path)
    # Each agency kept its nonce beside its bets file.
    assert sorted(p.name for p in tmp_path.glob("lottery-draw-agency-*.json")) == [
        f"lottery-draw-agency-{a}.json" for a in range(1, 4)
    ]


@pytest.mark.skipif(
    not SHARED_ZIP.exists(), reason="the course's tp0 dataset is not beside the repo"
)
def test_the_tp0_dataset_in_a_random_round_verifies(tmp_path: Path) -> None:
    """tp0's real files in a random round: every bet exported, receipts match, verify passes."""
    with zipfile.ZipFile(SHARED_ZIP) as archive:
        archive.extractall(tmp_path / "in")
    files = [next((tmp_path / "in").rglob(f"agency-{i}.csv")) for i in range(1, 6)]
    _random_round(tmp_path, files)
    out = _export_and_verify(tmp_path)
    assert "the digest of 78697 bets" in out
    exported = export_bets(tmp_path / "data", tmp_path / "again.csv", timeout=60 * UNIT)
    assert collections.Counter(exported) == collections.Counter(input_bets(files))


def test_a_fixed_round_gives_every_agency_a_receipt_too(tmp_path: Path) -> None:
    """In a fixed round too, each agency gets the server's digest of its bets and checks it."""
    files = [write_agency_file(tmp_path / f"agency-{i}.csv", make_rows(30 * i)) for i in (1, 2)]
    server = start_server(tmp_path / "data", len(files))
    try:
        agencies = [start_agency(i, server.port, f) for i, f in enumerate(files, 1)]
        wait_agencies(agencies, timeout=60 * UNIT)
    finally:
        assert stop_server(server) == 0, server.log()[-3000:]
    for agency in agencies:
        assert agency.returncode == 0, agency.output[-3000:]
        [receipt] = log_events(agency.output.splitlines(), "recibo", result="success")
        assert receipt["digesto_servidor"] == receipt["digesto_agencia"], receipt
        assert (
            receipt["apuestas_servidor"] == receipt["apuestas_agencia"] == str(30 * agency.agency)
        )
