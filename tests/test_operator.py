"""What an operator meets: export rules, make-secrets, help text, warnings (operator issue)."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

from lottery.csvfiles import excel_safe, write_bets_csv
from lottery.store import SQLiteStore
from lottery.store.base import PendingBatch

from .conftest import UNIT

pytestmark = pytest.mark.timeout(60)

FORMULA_NAMES = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)"]


def _run_lottery(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lottery", *args],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        cwd=cwd,
        check=False,
    )


def _store_with(data_dir: Path, rows: list[tuple[str, str, str, str, str]]) -> None:
    store = SQLiteStore(data_dir, agencies=1)
    try:
        store.commit([PendingBatch(1, 1, rows)])
    finally:
        store.close()


# -- the export ---------------------------------------------------------------------------


def test_excel_safe_quotes_only_cells_a_spreadsheet_would_run() -> None:
    """Text starting with = + - @ tab or CR gets a leading quote; other cells are unchanged."""
    for name in [*FORMULA_NAMES, "\tx", "\rx"]:
        assert excel_safe(name) == "'" + name
    for value in ["Ana", "O'Hara", "", "1999-03-17", 7574, -1]:
        assert excel_safe(value) == value


def test_export_is_tp0_exact_by_default_and_neutralised_with_excel_safe() -> None:
    """Without the option names are written as stored; with it, formula-like names are quoted."""
    rows = [(1, name, "Lorca", "30904465", "1999-03-17", 7574) for name in FORMULA_NAMES]
    plain, safe = io.StringIO(newline=""), io.StringIO(newline="")
    write_bets_csv(rows, plain)
    write_bets_csv(rows, safe, excel_safe_cells=True)
    assert [r[1] for r in csv.reader(io.StringIO(plain.getvalue()))] == FORMULA_NAMES
    safe_rows = list(csv.reader(io.StringIO(safe.getvalue())))
    assert [r[1] for r in safe_rows] == ["'" + n for n in FORMULA_NAMES]
    assert [r[2:] for r in safe_rows] == [["Lorca", "30904465", "1999-03-17", "7574"]] * 4


@pytest.mark.e2e
def test_lottery_export_to_stdout_with_excel_safe(tmp_path: Path) -> None:
    """`lottery export --csv - --excel-safe` writes the CSV (CRLF) to stdout and no file named -."""
    _store_with(tmp_path / "data", [("=cmd", "-Lorca", "30904465", "1999-03-17", "7574")])
    done = subprocess.run(
        [sys.executable, "-m", "lottery", "export", "--data-dir", "data", "--csv", "-",
         "--excel-safe"],
        capture_output=True, timeout=30 * UNIT, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"1,'=cmd,'-Lorca,30904465,1999-03-17,7574\r\n"
    assert not (tmp_path / "-").exists()
    assert b"action: export | result: success | cantidad: 1" in done.stderr
