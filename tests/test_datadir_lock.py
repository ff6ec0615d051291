"""One server per data directory: the store's lock, in-process and between real processes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lottery.errors import ConfigError
from lottery.store import SQLiteStore
from roundrunner import lottery_command, start_server, stop_server

from .conftest import UNIT

pytestmark = pytest.mark.timeout(60)


def test_a_second_exclusive_store_is_refused_naming_the_holder(tmp_path: Path) -> None:
    """While one server holds a data directory, another cannot open it, and is told who holds it."""
    first = SQLiteStore(tmp_path, 2, exclusive=True)
    try:
        with pytest.raises(ConfigError, match=rf"in use by another server \(pid {os.getpid()} on "):
            SQLiteStore(tmp_path, 2, exclusive=True)
        reader = SQLiteStore(tmp_path)  # the export and status take no lock
        reader.close()
    finally:
        first.close()
    SQLiteStore(tmp_path, 2, exclusive=True).close()  # closing freed it


def test_a_store_that_fails_to_open_frees_the_lock(tmp_path: Path) -> None:
    """A refused open (another agency count) leaves the directory free for the right server."""
    SQLiteStore(tmp_path, 2).close()
    with pytest.raises(ConfigError, match="of 2 agencies"):
        SQLiteStore(tmp_path, 3, exclusive=True)
    SQLiteStore(tmp_path, 2, exclusive=True).close()


@pytest.mark.e2e
def test_a_second_server_on_one_data_dir_exits_2_naming_the_first(tmp_path: Path) -> None:
    """A second `lottery server` on a busy data directory exits 2, one line naming the first."""
    first = start_server(tmp_path, 1)
    try:
        second = subprocess.run(
            [
                *lottery_command(),
                "server",
                "--port",
                "0",
                "--agencies",
                "1",
                "--data-dir",
                tmp_path,
            ],
            capture_output=True,
            text=True,
            timeout=30 * UNIT,
        )
    finally:
        stop_server(first)
    assert second.returncode == 2
    assert second.stderr.strip().count("\n") == 0
    assert f"pid {first.proc.pid} on" in second.stderr
